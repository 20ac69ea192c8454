//! Request debugging on the other transports: `/v1/ws` completions (a
//! socket opened while debugging was off keeps what it runs once it is
//! turned on, and stops at once when it is turned off again; a stream is
//! kept assembled as the client read it) and `/v1/embeddings`.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::debug::{
    CONFIG, body_for, create_key, files_holding, set_debug, unique_prompt, wait_for,
};
use super::sign_in;
use crate::support::{self, Harness, client_with_key};

const WAIT: Duration = Duration::from_secs(20);

/// Runs one completion on the socket; the text of its chunks (streamed)
/// or of its whole completion.
async fn run<S>(ws: &mut S, id: &str, prompt: &str, stream: bool) -> String
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + SinkExt<Message>
        + Unpin,
    <S as futures_util::Sink<Message>>::Error: std::fmt::Debug,
{
    let request = json!({"type": "chat.completion.create", "id": id, "request": {
        "model": "echo-mini", "stream": stream,
        "messages": [{"role": "user", "content": prompt}]}});
    ws.send(Message::text(request.to_string())).await.unwrap();
    let mut text = String::new();
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time");
        let Some(Ok(Message::Text(frame))) = message else {
            continue;
        };
        let value: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(value["id"], id, "{value}");
        match value["type"].as_str().unwrap() {
            "chunk" => {
                let piece = &value["chunk"]["choices"][0]["delta"]["content"];
                text.push_str(piece.as_str().unwrap_or_default());
            }
            "completion" => {
                let content = &value["completion"]["choices"][0]["message"]["content"];
                text.push_str(content.as_str().unwrap());
            }
            "done" => return text,
            other => panic!("unexpected {other}: {value}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sockets_completions_are_kept_while_its_key_debugs() {
    let h = Harness::start(Some(CONFIG)).await;
    let (ann, _) = sign_in(&h, "dora@example.com").await;
    let (id, secret) = create_key(&ann, "socket", false).await;
    let api = client_with_key(&secret);
    let mut ws = support::ws_with_key(&h, &secret).await;

    let before = unique_prompt("before");
    run(&mut ws, "a", &before, true).await;
    // Turned on while the socket is open: its next completions are kept.
    set_debug(&ann, &id, true).await;
    let (streamed, whole) = (unique_prompt("wsstream"), unique_prompt("wswhole"));
    let streamed_text = run(&mut ws, "b", &streamed, true).await;
    let whole_text = run(&mut ws, "c", &whole, false).await;
    let data = wait_for(&h, &api, &id, 2).await;
    let kept = body_for(&data, &streamed);
    assert_eq!(kept["transport"], "ws");
    assert_eq!(kept["status"], 200);
    let response = &kept["response"];
    assert_eq!(
        response["choices"][0]["message"]["content"],
        streamed_text.as_str()
    );
    assert!(response["stream_chunks"].as_u64().unwrap() > 1);
    let kept = body_for(&data, &whole);
    assert_eq!(
        kept["response"]["choices"][0]["message"]["content"],
        whole_text.as_str()
    );

    // Off again: the socket's next completion is not kept.
    set_debug(&ann, &id, false).await;
    let after = unique_prompt("after");
    run(&mut ws, "d", &after, true).await;
    set_debug(&ann, &id, true).await;
    let last = unique_prompt("last");
    run(&mut ws, "e", &last, false).await;
    let data = wait_for(&h, &api, &id, 3).await;
    body_for(&data, &last);
    for absent in [&before, &after] {
        assert!(
            !data
                .iter()
                .any(|b| b["request"]["messages"][0]["content"] == **absent)
        );
        assert_eq!(files_holding(&h, absent).await, Vec::<String>::new());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embeddings_request_is_kept_with_its_vectors() {
    let h = Harness::start(Some(CONFIG)).await;
    let (ann, _) = sign_in(&h, "emma@example.com").await;
    let (id, secret) = create_key(&ann, "embedder", true).await;
    let api = client_with_key(&secret);
    let input = unique_prompt("embed");
    let response = api
        .post(h.url("/v1/embeddings"))
        .json(&json!({"model": "echo-mini", "input": [input]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answered: Value = response.json().await.unwrap();
    let data = wait_for(&h, &api, &id, 1).await;
    let kept = &data[0];
    assert_eq!(kept["request"]["input"][0], input.as_str());
    assert_eq!(kept["status"], 200);
    assert_eq!(
        kept["response"]["data"][0]["embedding"],
        answered["data"][0]["embedding"]
    );
    assert_eq!(kept["response"]["usage"]["cost"], answered["usage"]["cost"]);
}
