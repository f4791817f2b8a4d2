//! Turning token pieces into streamable text.
//!
//! Token pieces are raw bytes and a UTF-8 character may span several tokens,
//! so bytes are held until they form whole characters; the bytes of a
//! character the end of generation cut through (`max_tokens` inside an
//! emoji) are dropped, never sent as U+FFFD. Stop strings may also
//! span tokens, so text that could be the start of a stop string is held back
//! until it is known not to be one: a partial stop string never leaks.

/// Incremental detokenizer with stop-string detection for one sequence.
#[derive(Debug, Default)]
pub struct TextStream {
    /// Bytes not yet forming a whole character.
    bytes: Vec<u8>,
    /// Decoded text not yet released (it may begin a stop string).
    held: String,
    stops: Vec<String>,
}

/// What one push released.
#[derive(Debug, PartialEq, Eq)]
pub enum Release {
    /// Text that is safe to send (may be empty).
    Text(String),
    /// A stop string was completed: send this text (what preceded the stop) and finish.
    Stopped(String),
}

impl TextStream {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            ..Default::default()
        }
    }

    /// Add the bytes of one token piece.
    pub fn push(&mut self, piece: &[u8]) -> Release {
        self.bytes.extend_from_slice(piece);
        self.decode_whole_chars();
        if let Some(at) = self.earliest_stop() {
            self.held.truncate(at);
            return Release::Stopped(std::mem::take(&mut self.held));
        }
        let keep = self.stop_prefix_len();
        let release = self.held.len() - keep;
        let rest = self.held.split_off(release);
        Release::Text(std::mem::replace(&mut self.held, rest))
    }

    /// The end of generation: release the text still held. The bytes left
    /// are the start of a character generation ended inside of (invalid
    /// ones were replaced as they came): they are dropped, so the output
    /// never ends in a partial character.
    pub fn finish(&mut self) -> String {
        self.bytes.clear();
        std::mem::take(&mut self.held)
    }

    fn decode_whole_chars(&mut self) {
        loop {
            match std::str::from_utf8(&self.bytes) {
                Ok(s) => {
                    self.held.push_str(s);
                    self.bytes.clear();
                    return;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // Safe: `valid_up_to` bytes are valid UTF-8 by definition.
                    self.held
                        .push_str(&String::from_utf8_lossy(&self.bytes[..valid]));
                    match e.error_len() {
                        // Incomplete character at the end: wait for more bytes.
                        None => {
                            self.bytes.drain(..valid);
                            return;
                        }
                        // Invalid bytes in the middle: replace and go on.
                        Some(bad) => {
                            self.held.push(char::REPLACEMENT_CHARACTER);
                            self.bytes.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    fn earliest_stop(&self) -> Option<usize> {
        self.stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
    }

    /// Length of the longest suffix of `held` that is a proper prefix of a stop string.
    fn stop_prefix_len(&self) -> usize {
        let mut best = 0;
        for stop in &self.stops {
            for (k, _) in stop.char_indices().skip(1) {
                if k > best && self.held.ends_with(&stop[..k]) {
                    best = k;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(r: Release) -> String {
        match r {
            Release::Text(t) => t,
            Release::Stopped(t) => panic!("unexpected stop with {t:?}"),
        }
    }

    #[test]
    fn never_splits_a_character() {
        let mut s = TextStream::new(vec![]);
        let bytes = "é€😀".as_bytes();
        let mut out = String::new();
        for b in bytes {
            let t = texts(s.push(&[*b]));
            assert!(t.is_empty() || bytes.starts_with(format!("{out}{t}").as_bytes()));
            out.push_str(&t);
        }
        out.push_str(&s.finish());
        assert_eq!(out, "é€😀");
    }

    #[test]
    fn invalid_bytes_become_replacement() {
        let mut s = TextStream::new(vec![]);
        assert_eq!(texts(s.push(&[b'a', 0xff, b'b'])), "a\u{fffd}b");
        assert_eq!(texts(s.push(&[0xe2, 0x82])), "");
        // An incomplete character at the end is dropped, not replaced.
        assert_eq!(s.finish(), "");
    }

    #[test]
    fn a_cut_inside_a_character_drops_its_bytes() {
        let text = "a😀é€b🎉";
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            // One byte per token, and pieces of several bytes.
            for chunk in [1, 2, 3] {
                let mut s = TextStream::new(vec![]);
                let mut out = String::new();
                for piece in bytes[..cut].chunks(chunk) {
                    out.push_str(&texts(s.push(piece)));
                }
                out.push_str(&s.finish());
                assert!(!out.contains('\u{fffd}'), "cut {cut}: {out:?}");
                // The longest prefix of whole characters.
                let whole = (0..=cut).rev().find(|&n| text.is_char_boundary(n));
                assert_eq!(Some(out.as_str()), whole.map(|n| &text[..n]), "cut {cut}");
            }
        }
    }

    #[test]
    fn a_held_stop_prefix_is_released_and_a_partial_character_dropped() {
        let mut s = TextStream::new(vec!["ENDE".into()]);
        assert_eq!(texts(s.push(b"ok EN")), "ok ");
        assert_eq!(texts(s.push(&[0xf0, 0x9f])), "");
        assert_eq!(s.finish(), "EN");
    }

    #[test]
    fn stop_string_across_tokens_is_not_leaked() {
        let mut s = TextStream::new(vec!["END".into()]);
        assert_eq!(texts(s.push(b"hello E")), "hello ");
        assert_eq!(texts(s.push(b"N")), "");
        assert_eq!(s.push(b"D and more"), Release::Stopped(String::new()));
    }

    #[test]
    fn false_start_is_released() {
        let mut s = TextStream::new(vec!["END".into()]);
        assert_eq!(texts(s.push(b"E")), "");
        assert_eq!(texts(s.push(b"NX")), "ENX");
        assert_eq!(s.push(b" yes END"), Release::Stopped(" yes ".into()));
    }

    #[test]
    fn held_text_flushes_at_finish() {
        let mut s = TextStream::new(vec!["\n\n".into()]);
        assert_eq!(texts(s.push(b"line\n")), "line");
        assert_eq!(s.finish(), "\n");
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let mut s = TextStream::new(vec!["bb".into(), "a".into()]);
        assert_eq!(s.push(b"xxbbya"), Release::Stopped("xx".into()));
    }
}
