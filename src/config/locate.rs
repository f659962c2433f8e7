//! Where in the YAML text a key path lives, so that a rejection found after parsing (a duplicate,
//! a file that does not exist, a bad address) can name its line.
//!
//! Paths are written as serde_yaml writes them in its own errors: `finesse[0].servers[2].upstream`.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Line numbers (1-based) of every key and sequence item in a YAML document.
#[derive(Debug, Default)]
pub struct LineIndex {
    lines: HashMap<String, usize>,
}

impl LineIndex {
    /// Indexes `text`. A document the YAML parser rejects yields an empty index: serde_yaml reports
    /// that error itself, with its line.
    pub fn new(text: &str) -> Self {
        let mut builder = Builder::default();
        if Parser::new_from_str(text)
            .load(&mut builder, false)
            .is_err()
        {
            return LineIndex::default();
        }
        LineIndex {
            lines: builder.lines,
        }
    }

    /// The line of `path`, or of its closest ancestor that is written in the file (a key left out
    /// takes its default, so the error points at the block that omitted it).
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut path = path;
        loop {
            if let Some(line) = self.lines.get(path) {
                return Some(*line);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }
}

enum Frame {
    Mapping { path: String, key: Option<String> },
    Sequence { path: String, index: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
}

impl Builder {
    /// Called for every node; returns the node's own path when it is a value (not a mapping key).
    fn enter_node(&mut self, scalar: Option<&str>, line: usize) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Sequence { path, index }) => {
                let item = format!("{path}[{index}]");
                *index += 1;
                self.lines.entry(item.clone()).or_insert(line);
                Some(item)
            }
            Some(Frame::Mapping { path, key }) => match key.take() {
                Some(k) => Some(join(path, &k)),
                None => {
                    let name = scalar.unwrap_or_default().to_string();
                    self.lines.entry(join(path, &name)).or_insert(line);
                    *key = Some(name);
                    None
                }
            },
        }
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(value, ..) => {
                self.enter_node(Some(&value), line);
            }
            Event::Alias(_) => {
                self.enter_node(None, line);
            }
            Event::MappingStart(..) => {
                if let Some(path) = self.enter_node(None, line) {
                    self.stack.push(Frame::Mapping { path, key: None });
                }
            }
            Event::SequenceStart(..) => {
                if let Some(path) = self.enter_node(None, line) {
                    self.stack.push(Frame::Sequence { path, index: 0 });
                }
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
server:
  threads: 2
  admin:
    listen: 127.0.0.1:9900
finesse:
  - name: desktop
    servers:
      - public: a.example.com:443
        upstream: a.internal:8445
      - {public: b.example.com:443, upstream: b.internal:8445}
    client_allow: [10.0.0.0/8, 192.168.0.1]
";

    #[test]
    fn finds_block_and_flow_keys() {
        let index = LineIndex::new(DOC);
        assert_eq!(index.line_of("server.threads"), Some(2));
        assert_eq!(index.line_of("server.admin.listen"), Some(4));
        assert_eq!(index.line_of("finesse[0]"), Some(6));
        assert_eq!(index.line_of("finesse[0].name"), Some(6));
        assert_eq!(index.line_of("finesse[0].servers[0].upstream"), Some(9));
        assert_eq!(index.line_of("finesse[0].servers[1].upstream"), Some(10));
        assert_eq!(index.line_of("finesse[0].client_allow[1]"), Some(11));
    }

    #[test]
    fn missing_keys_fall_back_to_their_block() {
        let index = LineIndex::new(DOC);
        assert_eq!(index.line_of("finesse[0].servers[0].role"), Some(8));
        assert_eq!(index.line_of("finesse[0].tls.cert"), Some(6));
        assert_eq!(index.line_of("digital_channels[0].name"), None);
    }

    #[test]
    fn unparsable_text_gives_no_lines() {
        let index = LineIndex::new("a: [unclosed\n");
        assert_eq!(index.line_of("a"), None);
    }
}
