#!/usr/bin/env python3
"""An external check for ccedge (auth.external): lets each listed user in during their hours.

Usage: check.py RULES [HOST:PORT]      (default 127.0.0.1:9180)

RULES has a line per user, "user HH:MM-HH:MM" (this machine's local time, two digits each, the
start before the end; 00:00-24:00 for any time), and is read again for every request, so an
edit applies at once. Users not listed, and
requests naming no user, are refused with 403. Allowed requests go on with X-Auth-User and
X-Auth-Hours, which ccedge adds to the request it forwards.
"""
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def hours_of(user):
    with open(sys.argv[1], encoding="utf-8") as rules:
        for line in rules:
            fields = line.split()
            if len(fields) == 2 and fields[0] == user:
                return fields[1]
    return None


class Check(BaseHTTPRequestHandler):
    def do_GET(self):
        user = self.headers.get("X-Forwarded-User")
        user = user and user.encode("latin-1").decode("utf-8", "replace")
        hours = hours_of(user) if user else None
        now = time.strftime("%H:%M")
        start, _, end = (hours or "-").partition("-")
        allowed = hours is not None and start <= now < end
        print(f"{now} {user} {self.headers.get('X-Forwarded-Method')} "
              f"{self.headers.get('X-Forwarded-Uri')} from {self.headers.get('X-Forwarded-For')}: "
              f"{'allowed' if allowed else 'refused'}", flush=True)
        body = b"" if allowed else f"{user or 'nobody'} may not come in at {now}\n".encode()
        self.send_response(200 if allowed else 403)
        if allowed:
            self.send_header("X-Auth-User", user)
            self.send_header("X-Auth-Hours", hours)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


host, _, port = (sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1:9180").rpartition(":")
ThreadingHTTPServer((host, int(port)), Check).serve_forever()
