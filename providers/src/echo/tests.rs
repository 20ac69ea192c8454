//! The echo provider: deterministic replies, OpenAI-shaped chunks, exact usage,
//! one token per chunk, and delays on tokio's (paused) clock.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;

use super::{EchoAdapter, EchoConfig, OPENING, Pieces, VOCABULARY};
use crate::tokens;
use crate::types::{ChatCompletionChunk, ChatRequest};

fn request(body: serde_json::Value) -> ChatRequest {
    serde_json::from_value(body).unwrap()
}

fn ask(text: &str, max_tokens: Option<u32>) -> ChatRequest {
    let mut req = request(json!({"model": "echo-1", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "an earlier question"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": text}
    ]}));
    req.max_completion_tokens = max_tokens;
    req
}

async fn chunks(adapter: &EchoAdapter, req: &ChatRequest) -> Vec<ChatCompletionChunk> {
    let stream = adapter.stream(req).await.unwrap();
    stream.map(Result::unwrap).collect().await
}

fn content(chunks: &[ChatCompletionChunk]) -> String {
    chunks
        .iter()
        .flat_map(|c| &c.choices)
        .filter_map(|c| c.delta.content.as_deref())
        .collect()
}

fn echo(reply_tokens: u32) -> EchoAdapter {
    EchoAdapter::new(EchoConfig {
        reply_tokens,
        ..EchoConfig::default()
    })
}

#[test]
fn every_fixed_piece_is_one_token() {
    for piece in OPENING.iter().chain(&VOCABULARY) {
        assert_eq!(tokens::count_text(piece), 1, "{piece:?}");
    }
}

#[tokio::test]
async fn replies_echo_the_last_user_message_deterministically() {
    let adapter = echo(16);
    let req = ask("Hello there, tokun! supercalifragilistic 42", None);
    let first = chunks(&adapter, &req).await;
    let second = chunks(&adapter, &req).await;
    assert_eq!(content(&first), content(&second));
    assert_eq!(first[0].id, second[0].id);
    assert!(first[0].id.starts_with("chatcmpl-echo-"));
    let text = content(&first);
    // Words that are not one token (or not alphanumeric) are replaced by vocabulary.
    assert!(text.starts_with("echo: Hello there "), "{text}");
    assert!(!text.contains("supercalifragilistic"), "{text}");
    let completion = adapter.complete(&req).await.unwrap();
    assert_eq!(completion.choices[0].message["content"], text.as_str());
    assert_eq!(completion.id, first[0].id);
}

#[tokio::test]
async fn stream_is_shaped_like_openai() {
    let chunks = chunks(&echo(4), &ask("hi", None)).await;
    let shapes: Vec<_> = chunks
        .iter()
        .map(|c| serde_json::to_value(c).unwrap())
        .collect();
    assert_eq!(shapes.len(), 1 + 4 + 2);
    let created = &shapes[0]["created"];
    for shape in &shapes {
        assert_eq!(shape["object"], "chat.completion.chunk");
        assert_eq!(shape["model"], "echo-1");
        assert_eq!(&shape["created"], created);
    }
    assert_eq!(
        shapes[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": "", "refusal": null})
    );
    assert_eq!(shapes[1]["choices"][0]["delta"], json!({"content": "echo"}));
    assert_eq!(shapes[2]["choices"][0]["delta"], json!({"content": ":"}));
    assert_eq!(shapes[3]["choices"][0]["delta"], json!({"content": " hi"}));
    assert_eq!(
        shapes[5]["choices"][0],
        json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"})
    );
    assert_eq!(shapes[6]["choices"], json!([]));
    assert_eq!(shapes[6]["usage"]["completion_tokens"], 4);
    assert!(shapes[..6].iter().all(|s| s["usage"].is_null()));
}

#[tokio::test]
async fn max_tokens_cuts_the_reply_with_length() {
    let adapter = echo(16);
    let cut = chunks(&adapter, &ask("hi", Some(5))).await;
    assert_eq!(
        cut.iter()
            .filter_map(|c| c.finish_reason())
            .collect::<Vec<_>>(),
        ["length"]
    );
    assert_eq!(cut.last().unwrap().usage.unwrap().completion_tokens, 5);
    let completion = adapter.complete(&ask("hi", Some(5))).await.unwrap();
    assert_eq!(
        completion.choices[0].finish_reason.as_deref(),
        Some("length")
    );

    let roomy = chunks(&adapter, &ask("hi", Some(100))).await;
    assert_eq!(roomy.iter().find_map(|c| c.finish_reason()), Some("stop"));
    assert_eq!(roomy.last().unwrap().usage.unwrap().completion_tokens, 16);
}

#[tokio::test]
async fn usage_is_exact_and_one_chunk_is_one_token() {
    let adapter = echo(40);
    for text in [
        "",
        "hello world",
        "Ünïcödé, émojis 👋 and numbers 1234 don't break it",
        "x",
    ] {
        let req = ask(text, None);
        let chunks = chunks(&adapter, &req).await;
        let pieces: Vec<&str> = chunks[1..]
            .iter()
            .flat_map(|c| &c.choices)
            .filter_map(|c| c.delta.content.as_deref())
            .collect();
        assert_eq!(pieces.len(), 40);
        assert!(
            pieces.iter().all(|piece| tokens::count_text(piece) == 1),
            "{pieces:?}"
        );
        let usage = chunks.last().unwrap().usage.unwrap();
        assert_eq!(
            usage.completion_tokens,
            tokens::count_text(&content(&chunks)),
            "{text:?}"
        );
        assert_eq!(usage.prompt_tokens, tokens::estimate_prompt(&req));
        assert_eq!(
            usage.total_tokens,
            usage.prompt_tokens + usage.completion_tokens
        );
        assert_eq!(adapter.complete(&req).await.unwrap().usage, Some(usage));
    }
}

#[tokio::test(start_paused = true)]
async fn tokens_arrive_after_the_configured_delay() {
    let adapter = EchoAdapter::new(EchoConfig {
        delay: Duration::from_millis(50),
        reply_tokens: 8,
    });
    let start = tokio::time::Instant::now();
    let mut stream = adapter.stream(&ask("hi", None)).await.unwrap();
    stream.next().await.unwrap().unwrap();
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "the role chunk is immediate"
    );
    stream.next().await.unwrap().unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(50));
    while stream.next().await.is_some() {}
    assert_eq!(start.elapsed(), Duration::from_millis(400));

    let start = tokio::time::Instant::now();
    adapter.complete(&ask("hi", None)).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(400));
}

#[test]
fn pieces_are_the_opening_the_words_then_the_vocabulary_cycled() {
    let text = "Tell me, tell me: supercalifragilistic words!";
    let stored = Pieces::plan(text, 40);
    let got: Vec<&str> = (0..stored.len).map(|i| stored.get(i).unwrap()).collect();
    // The opening, then one piece per alphanumeric word (kept, or a
    // vocabulary stand-in when not one token), then the vocabulary from its start.
    assert_eq!(&got[..2], &OPENING[..]);
    assert_eq!(&got[2..5], &[" Tell", " me", " tell"]);
    assert!(VOCABULARY.contains(&got[6]), "{got:?}");
    assert_eq!(&got[8..24], &VOCABULARY[..]);
    assert_eq!(&got[24..40], &VOCABULARY[..]);
    assert_eq!(stored.get(40), None);
    // Fewer tokens than the opening, and none at all.
    let short = Pieces::plan(text, 1);
    assert_eq!(
        (short.len, short.get(0), short.get(1)),
        (1, Some("echo"), None)
    );
    assert_eq!(Pieces::plan(text, 0).get(0), None);
    // Only the words that fit are stored.
    assert_eq!(Pieces::plan(text, 3).echoed.len(), 1);
}
