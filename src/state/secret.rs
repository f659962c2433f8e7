//! The secret that keys the hashes of credentials (the verdict stores) and of user names (the
//! login lockouts). A hash means nothing without it, and a process must compute the hashes of
//! the process it replaces at a reload, so it is kept in `<pid_file>.state-key`: 32 random bytes
//! made on the first start, readable by ccedge's user only, and never written anywhere else; or,
//! for instances that share their state, `server.shared_state.key_file`, the same on each.

use crate::config::STATE_KEY_MIN;
use crate::observe::own_files::{open_own, read_own};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use siphasher::sip::SipHasher13;
use std::path::{Path, PathBuf};

/// The longest key file read.
const KEY_MAX: u64 = 4096;

pub struct StateKey {
    /// HMAC-SHA256 keyed with the secret, ready to hash (the key's blocks done once).
    mac: Hmac<Sha256>,
    /// The SipHash keys of user names, derived from the secret.
    names: (u64, u64),
    /// Tells two keys apart without telling anything about them.
    fingerprint: String,
}

impl StateKey {
    pub fn from_bytes(key: &[u8]) -> StateKey {
        let mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
        let derived = |label: &[u8]| -> [u8; 32] {
            let mut m = mac.clone();
            m.update(label);
            m.finalize().into_bytes().into()
        };
        let names = derived(b"ccedge lockout user names");
        let word = |i: usize| u64::from_le_bytes(names[i..i + 8].try_into().expect("8 bytes"));
        let fingerprint = derived(b"ccedge key fingerprint")[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        StateKey {
            mac,
            names: (word(0), word(8)),
            fingerprint,
        }
    }

    /// The key kept beside `pid_file`, made if there is none. Should it be unreadable or
    /// unwritable, a key for this process alone (and a warning: a reload then checks every
    /// credential again and forgets the lockouts).
    pub fn beside(pid_file: &str) -> StateKey {
        let path = key_file(pid_file);
        match kept_or_made(&path) {
            Ok(key) => StateKey::from_bytes(&key),
            Err(why) => {
                log::warn!(
                    "cannot keep the state key in {}: {why}; this process uses a key of its own, \
                     so the next reload checks every credential again and forgets the lockouts",
                    path.display()
                );
                StateKey::from_bytes(&rand::random::<[u8; 32]>())
            }
        }
    }

    pub fn mac(&self) -> Hmac<Sha256> {
        self.mac.clone()
    }

    /// A hasher of user names, keyed.
    pub fn name_hasher(&self) -> SipHasher13 {
        SipHasher13::new_with_keys(self.names.0, self.names.1)
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

pub fn key_file(pid_file: &str) -> PathBuf {
    PathBuf::from(format!("{pid_file}.state-key"))
}

/// The key in `path`, or a new one put there whole (written to a file of its own first, then
/// linked into place: whichever process comes first makes it, the others read it).
fn kept_or_made(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    for _ in 0..2 {
        if let Some(file) = open_own(path, KEY_MAX) {
            let private = file
                .metadata()
                .is_ok_and(|m| m.permissions().mode() & 0o077 == 0);
            let key = read_own(path, KEY_MAX).unwrap_or_default();
            if private && key.len() >= STATE_KEY_MIN {
                return Ok(key);
            }
        }
        if path.symlink_metadata().is_ok() {
            return Err(format!(
                "it is not a file of ccedge's own user of at least {STATE_KEY_MIN} bytes that only it may read"
            ));
        }
        let key: [u8; 32] = rand::random();
        let partial = PathBuf::from(format!(
            "{}.partial-{}-{:08x}",
            path.display(),
            std::process::id(),
            rand::random::<u32>()
        ));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&partial)
            .and_then(|mut file| {
                file.write_all(&key)?;
                file.sync_all()
            })
            .and_then(|()| std::fs::hard_link(&partial, path));
        let _ = std::fs::remove_file(&partial);
        match written {
            Ok(()) => return Ok(key.to_vec()),
            // Another process made it meanwhile: read theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("it changes while it is read".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::Hasher;

    #[test]
    fn the_key_is_made_once_and_read_by_the_next_process() {
        let dir = std::env::temp_dir().join(format!("ccedge-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pid_file = dir.join("ccedge.pid").display().to_string();
        let _ = std::fs::remove_file(key_file(&pid_file));
        let first = StateKey::beside(&pid_file);
        let second = StateKey::beside(&pid_file);
        assert_eq!(first.fingerprint(), second.fingerprint());
        let hash = |k: &StateKey| {
            let mut h = k.name_hasher();
            h.write(b"agent1");
            h.finish()
        };
        assert_eq!(hash(&first), hash(&second));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(key_file(&pid_file))
            .unwrap()
            .permissions();
        assert_eq!(mode.mode() & 0o777, 0o600);
        // A key file that is too short, or others may read, is not used, nor replaced behind
        // the operator's back.
        std::fs::write(key_file(&pid_file), b"short").unwrap();
        let own = StateKey::beside(&pid_file);
        assert_ne!(own.fingerprint(), first.fingerprint());
        assert_eq!(std::fs::read(key_file(&pid_file)).unwrap(), b"short");
        std::fs::write(key_file(&pid_file), [3; 32]).unwrap();
        let readable = std::fs::Permissions::from_mode(0o644);
        std::fs::set_permissions(key_file(&pid_file), readable).unwrap();
        assert_ne!(
            StateKey::beside(&pid_file).fingerprint(),
            StateKey::from_bytes(&[3; 32]).fingerprint()
        );
        let private = std::fs::Permissions::from_mode(0o600);
        std::fs::set_permissions(key_file(&pid_file), private).unwrap();
        assert_eq!(
            StateKey::beside(&pid_file).fingerprint(),
            StateKey::from_bytes(&[3; 32]).fingerprint()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn different_keys_hash_differently() {
        let a = StateKey::from_bytes(&[1; 32]);
        let b = StateKey::from_bytes(&[2; 32]);
        assert_ne!(a.fingerprint(), b.fingerprint());
        let mut ma = a.mac();
        let mut mb = b.mac();
        ma.update(b"Basic x");
        mb.update(b"Basic x");
        assert_ne!(ma.finalize().into_bytes(), mb.finalize().into_bytes());
    }
}
