//! A small `/v1/ws` client: runs two chat completions at once on one
//! WebSocket and prints their tokens as they arrive, then what each cost.
//!
//! ```sh
//! tokun serve &                                   # prints the demo key at first start
//! TOKUN_API_KEY=sk-tokun-… cargo run --example ws_client -- "Tell me a joke"
//! ```
//!
//! `TOKUN_URL` defaults to `ws://127.0.0.1:8080/v1/ws`, `TOKUN_MODEL` to `echo-mini`.

#![expect(
    clippy::print_stdout,
    reason = "an example program prints what it receives"
)]

use std::collections::HashMap;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("TOKUN_URL").unwrap_or_else(|_| "ws://127.0.0.1:8080/v1/ws".into());
    let key = std::env::var("TOKUN_API_KEY").context("set TOKUN_API_KEY to a tokun key")?;
    let model = std::env::var("TOKUN_MODEL").unwrap_or_else(|_| "echo-mini".into());
    let prompt = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "Hello, tokun!".into());

    let mut request = url.as_str().into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {key}").parse()?);
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;

    // Two completions on the same socket, told apart by the ids we choose.
    for (id, style) in [("plain", "plainly"), ("poem", "as a short poem")] {
        let create = json!({
            "type": "chat.completion.create",
            "id": id,
            "request": {
                "model": model,
                "stream": true,
                "messages": [{"role": "user", "content": format!("{prompt} (answer {style})")}],
            },
        });
        socket.send(Message::text(create.to_string())).await?;
    }

    let mut texts: HashMap<String, String> = HashMap::new();
    let mut running = 2;
    while running > 0 {
        let Some(message) = socket.next().await else {
            bail!("the socket closed early");
        };
        let Message::Text(text) = message? else {
            continue; // Pings are answered by tungstenite.
        };
        let message: Value = serde_json::from_str(&text)?;
        let id = message["id"].as_str().unwrap_or("-").to_owned();
        match message["type"].as_str() {
            Some("chunk") => {
                if let Some(token) = message["chunk"]["choices"][0]["delta"]["content"].as_str() {
                    println!("[{id}] {token:?}");
                    texts.entry(id).or_default().push_str(token);
                }
            }
            Some("done") => {
                let usage = &message["usage"];
                println!(
                    "[{id}] done: {} prompt + {} completion tokens, ${}",
                    usage["prompt_tokens"], usage["completion_tokens"], message["cost"]
                );
                running -= 1;
            }
            Some("error") => {
                println!("[{id}] error: {}", message["error"]["message"]);
                // An error before any chunk ends the completion; after one, `done` follows.
                if !texts.contains_key(&id) {
                    running -= 1;
                }
            }
            _ => {}
        }
    }
    for (id, text) in &texts {
        println!("\n{id}:\n{text}");
    }
    socket.close(None).await?;
    Ok(())
}
