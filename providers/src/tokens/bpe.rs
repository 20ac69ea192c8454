//! A compact o200k_base token counter.
//!
//! tiktoken-rs' `CoreBPE` keeps three copies of the vocabulary (encoder,
//! decoder, sorted token list), each token its own heap allocation: 41 MiB
//! resident for o200k, in a gateway whose whole budget at 500 streams is
//! 50 MB. Counting needs only the rank of each token's bytes, so this keeps
//! the vocabulary as one byte arena and one table of slices into it (≈ 7 MiB).
//! The split into pieces (tiktoken's regex) and the merge rules are
//! tiktoken's; tests check the counts against `CoreBPE` itself.

use std::collections::{BinaryHeap, HashMap};
use std::hash::BuildHasherDefault;

use fancy_regex::Regex;
use rustc_hash::FxHasher;

type Rank = u32;

/// Pieces at least this long are merged with a heap, as tiktoken does, so a
/// long run of one character costs O(n log n), not O(n²).
const LARGE_PIECE: usize = 100;

/// Ranks above o200k's vocabulary and special tokens; decoding stops here.
const RANK_SCAN_LIMIT: Rank = 201_000;

pub(super) struct Bpe {
    ranks: HashMap<&'static [u8], Rank, BuildHasherDefault<FxHasher>>,
    pieces: Regex,
}

impl Bpe {
    /// Reads the vocabulary out of tiktoken-rs' o200k_base. The `CoreBPE` is
    /// built and dropped on a thread of its own, so its allocations live in
    /// that thread's malloc arena and go back to the system with it rather
    /// than staying resident as free space in the main heap.
    pub(super) fn o200k() -> Option<Bpe> {
        let (arena, spans) = std::thread::spawn(vocabulary).join().ok()??;
        // Copied here, so nothing this thread keeps lives in that arena.
        let arena: &'static [u8] = Box::leak(Box::from(arena.as_slice()));
        let mut ranks = HashMap::with_capacity_and_hasher(spans.len(), Default::default());
        for (rank, start, end) in spans {
            ranks.insert(arena.get(start..end)?, rank);
        }
        let pieces = Regex::new(tiktoken_rs::O200K_BASE_PAT_STR).ok()?;
        Some(Bpe { ranks, pieces })
    }

    /// Tokens in `text`, special-token markers counted as plain text (as
    /// `CoreBPE::encode_ordinary` counts them).
    pub(super) fn count(&self, text: &str) -> u64 {
        let mut tokens = 0;
        let mut counted_to = 0;
        for piece in self.pieces.find_iter(text) {
            let Ok(piece) = piece else {
                // The regex gave up (backtracking limit): estimate the rest.
                let rest = text.len().saturating_sub(counted_to) as u64;
                return tokens + rest.div_ceil(4);
            };
            counted_to = piece.end();
            tokens += self.piece_tokens(piece.as_str().as_bytes());
        }
        tokens
    }

    fn piece_tokens(&self, piece: &[u8]) -> u64 {
        if piece.len() <= 1 || self.ranks.contains_key(piece) {
            return u64::from(!piece.is_empty());
        }
        if piece.len() < LARGE_PIECE {
            self.merge_small(piece)
        } else {
            self.merge_large(piece)
        }
    }

    fn rank(&self, bytes: &[u8]) -> Rank {
        self.ranks.get(bytes).copied().unwrap_or(Rank::MAX)
    }

    /// tiktoken's `_byte_pair_merge`: repeatedly merge the adjacent pair of
    /// lowest rank; returns the parts left.
    fn merge_small(&self, piece: &[u8]) -> u64 {
        // (start, rank of the pair starting at start)
        let mut parts: Vec<(usize, Rank)> = Vec::with_capacity(piece.len() + 1);
        for i in 0..piece.len() - 1 {
            parts.push((i, self.rank(&piece[i..i + 2])));
        }
        parts.push((piece.len() - 1, Rank::MAX));
        parts.push((piece.len(), Rank::MAX));
        let rank_at = |parts: &[(usize, Rank)], i: usize| {
            if i + 3 < parts.len() {
                self.rank(&piece[parts[i].0..parts[i + 3].0])
            } else {
                Rank::MAX
            }
        };
        loop {
            let (i, lowest) = parts[..parts.len() - 1].iter().enumerate().fold(
                (0, Rank::MAX),
                |best, (i, &(_, rank))| {
                    if rank < best.1 { (i, rank) } else { best }
                },
            );
            if lowest == Rank::MAX {
                break;
            }
            if i > 0 {
                parts[i - 1].1 = rank_at(&parts, i - 1);
            }
            parts[i].1 = rank_at(&parts, i);
            parts.remove(i + 1);
        }
        (parts.len() - 1) as u64
    }

    /// tiktoken's `_byte_pair_merge_large`: the same merges, the next one
    /// found with a heap over a linked list of parts.
    fn merge_large(&self, piece: &[u8]) -> u64 {
        struct Part {
            prev: usize,
            end: usize,
            next_end: usize,
            next_rank: Rank,
        }
        #[derive(PartialEq, Eq, PartialOrd, Ord)]
        struct Merge {
            rank: std::cmp::Reverse<Rank>,
            start: std::cmp::Reverse<usize>,
        }
        let merge = |start: usize, rank: Rank| Merge {
            rank: std::cmp::Reverse(rank),
            start: std::cmp::Reverse(start),
        };
        let len = piece.len();
        let mut parts: Vec<Part> = (0..len)
            .map(|i| Part {
                prev: i.wrapping_sub(1),
                end: i + 1,
                next_end: i + 2,
                next_rank: Rank::MAX,
            })
            .collect();
        let mut heap = BinaryHeap::with_capacity(len);
        for i in 0..len - 1 {
            let rank = self.rank(&piece[i..i + 2]);
            if rank != Rank::MAX {
                heap.push(merge(i, rank));
                parts[i].next_rank = rank;
            }
        }
        let offer = |parts: &mut Vec<Part>, heap: &mut BinaryHeap<Merge>, start, next_end| {
            let part: &mut Part = &mut parts[start];
            part.next_end = next_end;
            part.next_rank = Rank::MAX;
            if next_end <= len {
                let rank = self.rank(&piece[start..next_end]);
                if rank != Rank::MAX {
                    heap.push(merge(start, rank));
                    parts[start].next_rank = rank;
                }
            }
        };
        while let Some(Merge {
            rank: std::cmp::Reverse(rank),
            start: std::cmp::Reverse(left),
        }) = heap.pop()
        {
            if rank != parts[left].next_rank {
                continue; // invalidated by an earlier merge
            }
            let right = parts[left].end;
            let right_end = parts[left].next_end;
            let right_next_end = parts[right].next_end;
            parts[left].end = right_end;
            offer(&mut parts, &mut heap, left, right_next_end);
            if right_end < len {
                parts[right_end].prev = left;
            }
            if left > 0 {
                let prev = parts[left].prev;
                offer(&mut parts, &mut heap, prev, right_end);
            }
            parts[right].next_rank = Rank::MAX;
        }
        let (mut tokens, mut i) = (0, 0);
        while i < len {
            tokens += 1;
            i = parts[i].end;
        }
        tokens
    }
}

/// o200k's ordinary tokens as one arena and `(rank, start, end)` spans.
type Vocabulary = (Vec<u8>, Vec<(Rank, usize, usize)>);

fn vocabulary() -> Option<Vocabulary> {
    let vocabulary = read_vocabulary();
    // glibc keeps the CoreBPE's many small freed chunks in fastbins until a
    // large free consolidates them; only then can this thread's arena hand
    // its pages back. One freed block over 64 KiB (under the 128 KiB mmap
    // threshold) does that.
    drop(std::hint::black_box(Vec::<u8>::with_capacity(96 << 10)));
    vocabulary
}

fn read_vocabulary() -> Option<Vocabulary> {
    let core = tiktoken_rs::o200k_base().ok()?;
    let specials: Vec<&[u8]> = core
        .special_tokens()
        .into_iter()
        .map(str::as_bytes)
        .collect();
    let mut arena = Vec::with_capacity(2 << 20);
    let mut spans = Vec::with_capacity(RANK_SCAN_LIMIT as usize);
    for rank in 0..RANK_SCAN_LIMIT {
        let Ok(bytes) = core.decode_bytes(&[rank]) else {
            continue;
        };
        if specials.contains(&bytes.as_slice()) {
            continue;
        }
        let start = arena.len();
        arena.extend_from_slice(&bytes);
        spans.push((rank, start, arena.len()));
    }
    Some((arena, spans))
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use proptest::prelude::*;
    use tiktoken_rs::CoreBPE;

    use super::*;

    static OURS: LazyLock<Bpe> = LazyLock::new(|| Bpe::o200k().unwrap());
    static THEIRS: LazyLock<CoreBPE> = LazyLock::new(|| tiktoken_rs::o200k_base().unwrap());

    fn same_count(text: &str) {
        let expected = THEIRS.encode_ordinary(text).len() as u64;
        assert_eq!(OURS.count(text), expected, "{text:?}");
    }

    #[test]
    fn counts_like_tiktoken() {
        for text in [
            "",
            "hello",
            "Hello, world! How are you today?",
            "  leading and trailing spaces   ",
            "tokun meters every token: 1234567890 and 3.14159",
            "naïve café — ünïcödé, 日本語のテキスト, emoji 🦀🚀",
            "<|endoftext|> is plain text here",
            "fn main() {\n    println!(\"{}\", 42);\n}\n\n\n",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "https://example.com/path?query=value&other=thing#frag",
        ] {
            same_count(text);
        }
    }

    #[test]
    fn long_pieces_take_the_heap_path_and_count_the_same() {
        same_count(&"x".repeat(5_000));
        same_count(&" ".repeat(3_000));
        same_count(&"ab1".repeat(400));
        same_count(&"😀".repeat(300));
        same_count(&"q".repeat(LARGE_PIECE));
        same_count(&"q".repeat(LARGE_PIECE - 1));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn any_text_counts_like_tiktoken(text in "\\PC{0,200}") {
            let expected = THEIRS.encode_ordinary(&text).len() as u64;
            prop_assert_eq!(OURS.count(&text), expected);
        }

        #[test]
        fn any_ascii_word_soup_counts_like_tiktoken(text in "[a-zA-Z0-9 .,'\\n]{0,400}") {
            let expected = THEIRS.encode_ordinary(&text).len() as u64;
            prop_assert_eq!(OURS.count(&text), expected);
        }
    }
}
