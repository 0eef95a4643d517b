//! Reading server-sent events from a response body: yields each event's `data` payload
//! (multi-line data joined by `\n`), skipping comments and keep-alives.

use std::collections::VecDeque;

use futures_util::StreamExt;

use crate::backend::BodyStream;

/// Events of one response body.
pub struct SseReader {
    body: BodyStream,
    buf: Vec<u8>,
    ready: VecDeque<String>,
    ended: bool,
}

impl std::fmt::Debug for SseReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseReader").field("buffered", &self.buf.len()).finish_non_exhaustive()
    }
}

/// Longest event we accept before calling the stream broken.
const MAX_EVENT: usize = 8 << 20;

impl SseReader {
    /// Reads events from `body`.
    pub fn new(body: BodyStream) -> Self {
        Self { body, buf: Vec::new(), ready: VecDeque::new(), ended: false }
    }

    /// The next payload; `None` at the end of the body; `Err` when the transfer broke.
    pub async fn next(&mut self) -> Option<Result<String, String>> {
        loop {
            if let Some(p) = self.ready.pop_front() {
                return Some(Ok(p));
            }
            if self.ended {
                return None;
            }
            match self.body.next().await {
                Some(Ok(chunk)) => {
                    self.buf.extend_from_slice(&chunk);
                    self.split_events();
                    if self.buf.len() > MAX_EVENT {
                        return Some(Err(format!("an event exceeded {MAX_EVENT} bytes")));
                    }
                }
                Some(Err(e)) => return Some(Err(e)),
                None => {
                    self.ended = true;
                    self.buf.extend_from_slice(b"\n\n");
                    self.split_events();
                }
            }
        }
    }

    fn split_events(&mut self) {
        let mut start = 0;
        let mut i = 0;
        while i < self.buf.len() {
            // An event ends at a blank line: "\n\n" or "\r\n\r\n" (or a mix).
            let end = if self.buf[i..].starts_with(b"\n\n") {
                Some(2)
            } else if self.buf[i..].starts_with(b"\r\n\r\n") {
                Some(4)
            } else {
                None
            };
            if let Some(n) = end {
                let event = String::from_utf8_lossy(&self.buf[start..i]).into_owned();
                if let Some(data) = Self::data(&event) {
                    self.ready.push_back(data);
                }
                i += n;
                start = i;
            } else {
                i += 1;
            }
        }
        self.buf.drain(..start);
    }

    fn data(event: &str) -> Option<String> {
        let mut out: Option<String> = None;
        for line in event.lines() {
            let Some(rest) = line.strip_prefix("data:") else { continue };
            let rest = rest.strip_prefix(' ').unwrap_or(rest);
            match &mut out {
                Some(s) => {
                    s.push('\n');
                    s.push_str(rest);
                }
                None => out = Some(rest.to_string()),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use bytes::Bytes;
    use futures_util::stream;

    use super::*;

    fn reader(chunks: Vec<Result<&'static str, &'static str>>) -> SseReader {
        let s = stream::iter(chunks.into_iter().map(|c| c.map(|s: &'static str| Bytes::from_static(s.as_bytes())).map_err(str::to_string)));
        SseReader::new(s.boxed())
    }

    #[tokio::test]
    async fn splits_events_across_chunks() {
        let mut r = reader(vec![Ok("data: {\"a\""), Ok(":1}\n\n: keep-alive\n\ndata: x\r\n\r\ndata: l1\ndata: l2\n\nda"), Ok("ta: [DONE]\n\n")]);
        let mut got = Vec::new();
        while let Some(p) = r.next().await {
            got.push(p.unwrap());
        }
        assert_eq!(got, ["{\"a\":1}", "x", "l1\nl2", "[DONE]"]);
    }

    #[tokio::test]
    async fn a_broken_transfer_is_an_error_after_the_complete_events() {
        let mut r = reader(vec![Ok("data: 1\n\ndata: 2"), Err("connection reset")]);
        assert_eq!(r.next().await.unwrap().unwrap(), "1");
        assert_eq!(r.next().await.unwrap().unwrap_err(), "connection reset");
    }
}
