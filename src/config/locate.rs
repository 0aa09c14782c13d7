//! Finds the line of a table or key in a TOML text, so that problems found after parsing
//! (semantic checks, SQL errors) can still say where they are.

pub struct Locator {
    lines: Vec<String>,
}

impl Locator {
    pub fn new(text: &str) -> Self {
        Locator {
            lines: text.lines().map(|l| l.trim().to_string()).collect(),
        }
    }

    /// Line (1-based) of the `index`-th header of `section` (`[s]` or `[[s]]`).
    pub fn section(&self, section: &str, index: usize) -> Option<usize> {
        let single = format!("[{section}]");
        let array = format!("[[{section}]]");
        self.lines
            .iter()
            .enumerate()
            .filter(|(_, l)| **l == single || **l == array)
            .nth(index)
            .map(|(i, _)| i + 1)
    }

    /// Line of `key` inside the `index`-th `section` table.
    pub fn key(&self, section: &str, index: usize, key: &str) -> Option<usize> {
        let start = self.section(section, index)?;
        self.lines[start..]
            .iter()
            .take_while(|l| !l.starts_with('['))
            .position(|l| {
                l.strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
            })
            .map(|i| start + i + 1)
    }
}
