//! Counts gRPC messages in a body: each is a 5-byte prefix (compression flag,
//! big-endian length) and that many bytes, split over data frames anyhow.

/// A running count of the gRPC messages seen in a stream of bytes.
#[derive(Debug, Default)]
pub struct FrameCounter {
    header: [u8; 5],
    filled: usize,
    remaining: u64,
}

impl FrameCounter {
    /// Feeds the next bytes; returns how many messages began in them.
    pub fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut started = 0;
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = data.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                data = &data[n..];
                self.remaining -= n as u64;
                continue;
            }
            let n = data.len().min(5 - self.filled);
            self.header[self.filled..self.filled + n].copy_from_slice(&data[..n]);
            self.filled += n;
            data = &data[n..];
            if self.filled == 5 {
                started += 1;
                self.filled = 0;
                let [_, a, b, c, d] = self.header;
                self.remaining = u64::from(u32::from_be_bytes([a, b, c, d]));
            }
        }
        started
    }
}

#[cfg(test)]
mod tests {
    use super::FrameCounter;

    fn message(len: u32) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend(std::iter::repeat_n(7u8, len as usize));
        bytes
    }

    #[test]
    fn counts_messages_split_anywhere() {
        let stream: Vec<u8> = [message(3), message(0), message(300), message(1)].concat();
        for chunk in 1..stream.len() {
            let mut counter = FrameCounter::default();
            let total: u64 = stream.chunks(chunk).map(|c| counter.feed(c)).sum();
            assert_eq!(total, 4, "chunks of {chunk}");
        }
    }
}
