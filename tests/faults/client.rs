//! Client faults: a slow SSE reader, and a client leaving before its
//! request is read, while it waits for the first byte, and after the last
//! chunk.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sse_reader_slows_the_upstream_read_and_is_billed_exactly() {
    let upstream = FakeUpstream::start().await.unwrap();
    // 2,000 chunks of ~8 KB: far more than the socket buffers hold.
    let words = " word".repeat(1600);
    upstream.push(Script {
        tokens: vec![words; 2000],
        ..Script::default()
    });
    let h = Harness::start(Some(&upstream_config(&upstream, ""))).await;
    let client = payer(&h, "slow@example.com").await;
    let response = post(&client, &h, &streamed_with_usage("fake-model")).await;
    assert_eq!(response.status(), 200);
    let mut events = response.bytes_stream().eventsource();
    let first: Value = serde_json::from_str(&events.next().await.unwrap().unwrap().data).unwrap();
    // The reader pauses: the stream waits for it instead of buffering the rest.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(h.server.streams().stats().live(), 1, "still relaying");
    assert_eq!(books(&client, &h).await.2, 1, "still held");
    let has_content = |chunk: &Value| {
        chunk["choices"][0]["delta"]["content"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
    };
    let mut content = usize::from(has_content(&first));
    let mut last = Value::Null;
    while let Some(event) = events.next().await {
        let data = event.unwrap().data;
        if data == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(&data).unwrap();
        content += usize::from(has_content(&chunk));
        last = chunk;
    }
    assert_eq!(content, 2000, "every chunk arrived");
    assert_eq!(last["usage"]["completion_tokens"], 2000);
    assert!(last["usage"].get("estimated").is_none(), "exact: {last}");
    let records = usage_records(&client, &h).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["error"], Value::Null);
    assert_eq!(records[0]["cost"], last["usage"]["cost"]);
    assert_eq!(
        settled_balance(&client, &h).await,
        CREDIT - nanos(&last["usage"]["cost"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_before_its_request_is_read_holds_and_charges_nothing() {
    let upstream = FakeUpstream::start().await.unwrap();
    let h = Harness::start(Some(&upstream_config(&upstream, ""))).await;
    let (_, key) = new_account(&h, "early@example.com", "5").await;
    let client = client_with_key(&key);
    let entries = verify_clean(&h).await["entries"].as_u64().unwrap();
    let mut socket = tokio::net::TcpStream::connect(h.server.addr())
        .await
        .unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: tokun\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: 400\r\n\r\n{{\"model\": \"fake-model\", "
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.server.streams().stats().live(), 0, "nothing started");
    assert_eq!(books(&client, &h).await.2, 0, "nothing held");
    drop(socket);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(upstream.calls(), 0);
    assert_eq!(h.server.streams().stats().total_started(), 0);
    assert_charged_nothing(&client, &h).await;
    assert_eq!(
        verify_clean(&h).await["entries"].as_u64().unwrap(),
        entries,
        "not one ledger entry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_while_waiting_for_the_first_byte_pays_its_prompt_only() {
    let upstream = FakeUpstream::start().await.unwrap();
    upstream.set_default(Script {
        hang: true,
        ..Script::default()
    });
    let settings = "first_byte_timeout_ms = 20000\ntotal_timeout_ms = 20000";
    let h = Harness::start(Some(&one_route(
        &upstream,
        "waiting",
        "waiting-model",
        settings,
    )))
    .await;
    let client = payer(&h, "impatient@example.com").await;
    let (mut charged, mut seen) = (0, Vec::new());
    for stream in [true, false] {
        let call = tokio::spawn({
            let (client, url) = (client.clone(), h.url("/v1/chat/completions"));
            async move {
                client
                    .post(url)
                    .json(&chat("waiting-model", stream))
                    .send()
                    .await
            }
        });
        wait_for_holds(&client, &h, 1).await;
        call.abort();
        let balance = settled_balance(&client, &h).await;
        let records = usage_records(&client, &h).await;
        let record = records
            .iter()
            .find(|r| !seen.contains(&r["request_id"]))
            .expect("a usage record for the request")
            .clone();
        seen.push(record["request_id"].clone());
        assert_eq!(record["error"], "client_gone", "stream {stream}: {record}");
        assert_eq!(record["completion_tokens"], 0, "{record}");
        assert_eq!(record["estimated"], true, "{record}");
        assert!(record["prompt_tokens"].as_u64() > Some(0), "{record}");
        charged += nanos(&record["cost"]);
        assert_eq!(
            balance,
            CREDIT - charged,
            "stream {stream}: the prompt only"
        );
    }
    let gone = [("model", "waiting-model"), ("outcome", "client_gone")];
    assert_eq!(
        metric(&h, "tokun_stream_outcomes_total", &gone).await,
        1.0,
        "the streamed one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_after_the_last_chunk_before_done_is_billed_once() {
    let upstream = FakeUpstream::start().await.unwrap();
    upstream.push(Script {
        tokens: vec!["Hello".into(), " there".into()],
        // Also between the closing chunk and the usage chunk / [DONE].
        delay: Duration::from_millis(300),
        ..Script::default()
    });
    let h = Harness::start(Some(&upstream_config(&upstream, ""))).await;
    let client = payer(&h, "late@example.com").await;
    let response = post(&client, &h, &streamed_with_usage("fake-model")).await;
    assert_eq!(response.status(), 200);
    let mut events = response.bytes_stream().eventsource();
    let mut text = String::new();
    loop {
        let data = events.next().await.unwrap().unwrap().data;
        assert_ne!(data, "[DONE]");
        let chunk: Value = serde_json::from_str(&data).unwrap();
        if let Some(content) = chunk["choices"][0]["delta"]["content"].as_str() {
            text.push_str(content);
        }
        if chunk["choices"][0]["finish_reason"] == "stop" {
            break;
        }
    }
    assert_eq!(text, "Hello there");
    drop(events);
    let balance = settled_balance(&client, &h).await;
    let records = usage_records(&client, &h).await;
    assert_eq!(records.len(), 1, "billed once: {records:?}");
    assert_eq!(records[0]["completion_tokens"], 2, "{records:?}");
    assert_eq!(balance, CREDIT - nanos(&records[0]["cost"]));
}
