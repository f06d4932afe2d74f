//! The event-stream codec (the wire format of server-sent events): cutting
//! a byte stream into events, reading one event's fields and writing them
//! back, with a bound on how much of an unfinished event is held. Both the
//! forwarder (the legacy `endpoint` event) and the list filter read events
//! through it; it imports nothing from the crate.

/// The largest event the proxy holds back to read (a list answer, the
/// legacy `endpoint` event); a longer one ends the stream with an error.
pub(crate) const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// An unfinished event grew past the splitter's limit.
#[derive(Debug, thiserror::Error)]
#[error("an event of the downstream's stream is longer than {0} bytes")]
pub(crate) struct EventTooLarge(pub usize);

/// Cuts an event stream into complete events (each with its blank-line
/// terminator), holding back only the unfinished tail. Lines end with CRLF,
/// LF or CR (the SSE grammar); every byte is scanned once, however the
/// stream is chunked, and an unfinished event is bounded.
pub(crate) struct EventSplitter {
    pending: Vec<u8>,
    /// How far `pending` has been scanned.
    scanned: usize,
    /// The scan is at the start of a line.
    line_start: bool,
    /// The last byte scanned was a CR: an LF right after it belongs to the
    /// same line end.
    after_cr: bool,
    limit: usize,
}

impl Default for EventSplitter {
    fn default() -> Self {
        EventSplitter::with_limit(MAX_EVENT_BYTES)
    }
}

impl EventSplitter {
    /// A splitter that holds at most `limit` bytes of an unfinished event.
    pub(crate) fn with_limit(limit: usize) -> Self {
        EventSplitter {
            pending: Vec::new(),
            scanned: 0,
            line_start: true,
            after_cr: false,
            limit,
        }
    }

    /// The complete events in `chunk` and what came before it. An event cut
    /// at a CR whose LF arrives in the next chunk leaves that LF as a piece
    /// of its own (it parses as no event), so the pieces always add up to
    /// the bytes fed.
    pub(crate) fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Vec<u8>>, EventTooLarge> {
        self.pending.extend_from_slice(chunk);
        let mut events = Vec::new();
        let mut start = 0;
        let mut i = self.scanned;
        while i < self.pending.len() {
            let byte = self.pending[i];
            let after_cr = std::mem::replace(&mut self.after_cr, false);
            if after_cr && byte == b'\n' {
                if start == i {
                    // The LF of a CRLF whose CR ended the previous event,
                    // in an earlier chunk.
                    events.push(vec![b'\n']);
                    start = i + 1;
                }
                i += 1;
                continue;
            }
            match byte {
                b'\r' | b'\n' => {
                    self.after_cr = byte == b'\r';
                    if self.line_start {
                        // A blank line: the event ends here, with its LF
                        // if a CRLF is complete.
                        let mut end = i + 1;
                        if byte == b'\r' && self.pending.get(end) == Some(&b'\n') {
                            end += 1;
                            self.after_cr = false;
                        }
                        events.push(self.pending[start..end].to_vec());
                        start = end;
                        i = end;
                        continue;
                    }
                    self.line_start = true;
                }
                _ => self.line_start = false,
            }
            i += 1;
        }
        self.pending.drain(..start);
        self.scanned = self.pending.len();
        if self.pending.len() > self.limit {
            return Err(EventTooLarge(self.limit));
        }
        Ok(events)
    }

    /// Whatever is left when the stream ends.
    pub(crate) fn take_rest(&mut self) -> Vec<u8> {
        self.scanned = 0;
        self.line_start = true;
        self.after_cr = false;
        std::mem::take(&mut self.pending)
    }
}

/// The fields of one event.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Event {
    /// The `event` field (the event's type).
    pub event: Option<String>,
    /// The `id` field.
    pub id: Option<String>,
    /// The `data` lines, joined with LF.
    pub data: Option<String>,
}

/// Reads one event's fields (the SSE grammar: CRLF, LF or CR line ends,
/// `:` comments, one optional space after the colon, data lines joined
/// with LF).
pub(crate) fn parse_event(raw: &[u8]) -> Event {
    let text = String::from_utf8_lossy(raw);
    let mut event = Event::default();
    let mut data: Vec<&str> = Vec::new();
    for line in text.split(['\r', '\n']) {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event.event = Some(value.to_string()),
            "id" => event.id = Some(value.to_string()),
            "data" => data.push(value),
            _ => {}
        }
    }
    if !data.is_empty() {
        event.data = Some(data.join("\n"));
    }
    event
}

/// Serialises an event; `parse_event` reads it back equal.
pub(crate) fn render_event(event: &Event) -> Vec<u8> {
    let mut out = String::new();
    if let Some(e) = &event.event {
        out.push_str(&format!("event: {e}\n"));
    }
    if let Some(id) = &event.id {
        out.push_str(&format!("id: {id}\n"));
    }
    if let Some(data) = &event.data {
        for line in data.split('\n') {
            out.push_str(&format!("data: {line}\n"));
        }
    }
    out.push('\n');
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_end_at_blank_lines_of_any_line_end() {
        let mut splitter = EventSplitter::default();
        let pieces = splitter
            .feed(b"data: a\r\rdata: b\r\n\r\ndata: c\n\ndata: d\r")
            .unwrap();
        let events: Vec<Event> = pieces.iter().map(|p| parse_event(p)).collect();
        assert_eq!(
            events.iter().map(|e| e.data.as_deref()).collect::<Vec<_>>(),
            [Some("a"), Some("b"), Some("c")]
        );
        // The CR may end the line or start a CRLF: nothing is decided yet.
        assert!(splitter.feed(b"\n").unwrap().is_empty());
        let last = splitter.feed(b"\r\n").unwrap();
        assert_eq!(parse_event(&last[0]).data.as_deref(), Some("d"));
        // A CR that ended an event, then its LF in the next chunk.
        let mut splitter = EventSplitter::default();
        assert_eq!(splitter.feed(b"data: e\n\r").unwrap().len(), 1);
        assert_eq!(
            splitter.feed(b"\ndata: f\n\n").unwrap(),
            [b"\n".to_vec(), b"data: f\n\n".to_vec()]
        );
    }

    #[test]
    fn feeding_byte_by_byte_scans_each_byte_once() {
        // 4 MiB in 1-byte chunks: quadratic rescanning would take minutes.
        let mut splitter = EventSplitter::default();
        let mut stream = b"data: ".to_vec();
        stream.extend(std::iter::repeat_n(b'x', 4 << 20));
        stream.extend(b"\n\n");
        let started = std::time::Instant::now();
        let mut events = 0;
        for byte in &stream {
            events += splitter.feed(std::slice::from_ref(byte)).unwrap().len();
        }
        assert_eq!(events, 1);
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }

    mod chunking {
        use super::super::*;
        use proptest::prelude::*;

        const ENDS: [&str; 3] = ["\r\n", "\n", "\r"];

        fn text() -> impl Strategy<Value = String> {
            "[a-z0-9 :{}\"\u{e9}\u{2028}]{0,10}"
        }

        fn event() -> impl Strategy<Value = (Event, Option<String>)> {
            (
                prop::option::of(text()),
                prop::option::of(text()),
                prop::option::of(prop::collection::vec(text(), 1..4)),
                prop::option::of(text()),
            )
                .prop_map(|(event, id, data, comment)| {
                    let data = data.map(|lines| lines.join("\n"));
                    let blank = event.is_none() && id.is_none() && data.is_none();
                    let comment = if blank {
                        Some(comment.unwrap_or_default())
                    } else {
                        comment
                    };
                    (Event { event, id, data }, comment)
                })
        }

        /// Writes events with the given line ends (cycled), a comment line
        /// where there is one, and sometimes no space after the colon.
        fn write(events: &[(Event, Option<String>)], ends: &[usize], spaces: &[bool]) -> Vec<u8> {
            let mut out = String::new();
            let mut n = 0;
            let mut previous = "";
            let mut line = |out: &mut String, text: String| {
                let mut end = ENDS[ends[n % ends.len()] % 3];
                // CR then LF would be one line end, not two.
                if previous == "\r" && end == "\n" {
                    end = "\r";
                }
                n += 1;
                previous = end;
                out.push_str(&text);
                out.push_str(end);
            };
            for (i, (event, comment)) in events.iter().enumerate() {
                let field = |name: &str, value: &str, k: usize| {
                    let space = spaces[(i + k) % spaces.len()] || value.starts_with(' ');
                    format!("{name}:{}{value}", if space { " " } else { "" })
                };
                if let Some(c) = comment {
                    line(&mut out, format!(":{c}"));
                }
                if let Some(e) = &event.event {
                    line(&mut out, field("event", e, 1));
                }
                if let Some(id) = &event.id {
                    line(&mut out, field("id", id, 2));
                }
                if let Some(data) = &event.data {
                    for (k, d) in data.split('\n').enumerate() {
                        line(&mut out, field("data", d, 3 + k));
                    }
                }
                line(&mut out, String::new());
            }
            out.into_bytes()
        }

        fn read(splitter: &mut EventSplitter, chunks: &[&[u8]]) -> (Vec<u8>, Vec<Event>) {
            let mut bytes = Vec::new();
            let mut events = Vec::new();
            for chunk in chunks {
                for piece in splitter.feed(chunk).unwrap() {
                    bytes.extend(&piece);
                    if piece != b"\n" {
                        events.push(parse_event(&piece));
                    }
                }
            }
            (bytes, events)
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

            /// Any chunking of a stream yields the events of reading it whole,
            /// which are the events written, and passes every byte through.
            #[test]
            fn any_chunking_yields_the_events_of_the_whole_stream(
                events in prop::collection::vec(event(), 0..6),
                ends in prop::collection::vec(0usize..3, 1..6),
                spaces in prop::collection::vec(any::<bool>(), 1..4),
                cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
            ) {
                let stream = write(&events, &ends, &spaces);
                let (whole_bytes, whole) = read(&mut EventSplitter::default(), &[&stream]);
                prop_assert_eq!(&whole_bytes, &stream);
                let written: Vec<Event> = events.iter().map(|(e, _)| e.clone()).collect();
                prop_assert_eq!(&whole, &written);
                let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
                cuts.sort_unstable();
                let mut chunks = Vec::new();
                let mut at = 0;
                for cut in cuts.into_iter().chain([stream.len()]) {
                    chunks.push(&stream[at..cut]);
                    at = cut;
                }
                let (chunked_bytes, chunked) = read(&mut EventSplitter::default(), &chunks);
                prop_assert_eq!(&chunked_bytes, &stream);
                prop_assert_eq!(&chunked, &whole);
            }

            /// A re-serialised event parses back equal.
            #[test]
            fn rendered_events_parse_back_equal((event, _) in event()) {
                let rendered = render_event(&event);
                prop_assert_eq!(&parse_event(&rendered), &event);
                let pieces = EventSplitter::default().feed(&rendered).unwrap();
                prop_assert_eq!(pieces, vec![rendered]);
            }
        }
    }
}
