//! The load of the crash loop: each client loops until told to stop or its server is gone.

#![allow(
    clippy::wildcard_imports,
    reason = "a part of the crash loop: it shares its imports and types"
)]

use super::*;

// ---------------------------------------------------------------------------
// The load: each client loops until told to stop or its server is gone.

pub(super) async fn sse_client(
    ctx: Arc<Ctx>,
    base: String,
    stop: Arc<AtomicBool>,
    mut rng: StdRng,
) {
    while !stop.load(Ordering::Relaxed) {
        let words = rng.random_range(1..8);
        let body = json!({
            "model": "stream", "stream": true, "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "crash loop ".repeat(words)}],
        });
        let url = format!("{base}/v1/chat/completions");
        let Ok(response) = ctx.demo.post(url).json(&body).send().await else {
            lock(&ctx.seen).counts.sse_cut += 1;
            return;
        };
        if response.status() != 200 {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            lock(&ctx.seen).fail(format!("SSE answered {status}: {text}"));
            continue;
        }
        let id = request_id(response.headers());
        let mut body = response.bytes_stream();
        let mut bytes = Vec::new();
        while let Some(Ok(chunk)) = body.next().await {
            bytes.extend_from_slice(&chunk);
        }
        if !bytes.ends_with(b"data: [DONE]\n\n") {
            lock(&ctx.seen).counts.sse_cut += 1;
            return;
        }
        let mut seen = lock(&ctx.seen);
        match sse_cost(&bytes, &id) {
            Ok(cost) => {
                seen.counts.sse_done += 1;
                seen.finish(id, "sse", cost);
            }
            Err(problem) => seen.fail(problem),
        }
    }
}

pub(super) fn request_id(headers: &reqwest::header::HeaderMap) -> String {
    headers
        .get("x-request-id")
        .expect("x-request-id")
        .to_str()
        .unwrap()
        .to_owned()
}

/// The cost in the usage chunk of a finished stream (each chunk must name the request).
pub(super) fn sse_cost(bytes: &[u8], id: &str) -> Result<i64, String> {
    let text = String::from_utf8_lossy(bytes);
    let mut costs = Vec::new();
    for data in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if data == "[DONE]" {
            continue;
        }
        let event: Value = serde_json::from_str(data).map_err(|e| format!("SSE {data}: {e}"))?;
        if event.get("error").is_some() {
            return Err(format!("SSE {id} carried an error: {data}"));
        }
        if event["id"] != format!("chatcmpl-{id}").as_str() {
            return Err(format!("SSE chunk of {id} names another request: {data}"));
        }
        if let Some(cost) = event["usage"]["cost"].as_str() {
            costs.push(nanos(cost));
        }
    }
    match costs.as_slice() {
        [cost] => Ok(*cost),
        _ => Err(format!("SSE {id}: {} usage chunks", costs.len())),
    }
}

pub(super) async fn unary_client(
    ctx: Arc<Ctx>,
    base: String,
    stop: Arc<AtomicBool>,
    mut rng: StdRng,
) {
    while !stop.load(Ordering::Relaxed) {
        let words = rng.random_range(1..8);
        let body = json!({
            "model": "unary",
            "messages": [{"role": "user", "content": "plain body ".repeat(words)}],
        });
        let url = format!("{base}/v1/chat/completions");
        let Ok(response) = ctx.demo.post(url).json(&body).send().await else {
            lock(&ctx.seen).counts.unary_cut += 1;
            return;
        };
        let status = response.status();
        let id = request_id(response.headers());
        let header_cost = response
            .headers()
            .get("x-tokun-cost")
            .map(|v| nanos(v.to_str().unwrap()));
        let Ok(text) = response.text().await else {
            lock(&ctx.seen).counts.unary_cut += 1;
            return;
        };
        {
            let mut seen = lock(&ctx.seen);
            if status != 200 {
                seen.fail(format!("body request answered {status}: {text}"));
            } else {
                let body: Value = serde_json::from_str(&text).unwrap();
                let cost = nanos(body["usage"]["cost"].as_str().unwrap());
                if header_cost != Some(cost) {
                    seen.fail(format!("{id}: x-tokun-cost {header_cost:?}, body {cost}"));
                }
                seen.counts.unary_done += 1;
                seen.finish(id, "unary", cost);
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..10))).await;
    }
}

pub(super) fn idem_body(key: u64) -> Value {
    json!({
        "model": "idem",
        "max_tokens": IDEM_BASE_TOKENS + key,
        "messages": [{"role": "user", "content": IDEM_PROMPT}],
    })
}

/// Picks a key: one whose attempt got no answer first, now and then one
/// already answered (its retry must be a replay), else a new one.
pub(super) fn next_idem_key(
    seen: &mut Seen,
    rng: &mut StdRng,
    allow_replay_check: bool,
) -> Option<(u64, bool)> {
    if let Some(key) = seen.idem_pending.pop_front() {
        return Some((key, false));
    }
    if !allow_replay_check {
        return None;
    }
    if !seen.idem_done.is_empty() && rng.random_ratio(1, 4) {
        let key = seen.idem_done[rng.random_range(0..seen.idem_done.len())];
        return Some((key, true));
    }
    let key = seen.idem_next;
    seen.idem_next += 1;
    seen.idem.insert(key, IdemKey::default());
    Some((key, false))
}

pub(super) async fn idem_client(
    ctx: Arc<Ctx>,
    base: String,
    stop: Arc<AtomicBool>,
    mut rng: StdRng,
) {
    while !stop.load(Ordering::Relaxed) {
        let Some((key, replay_check)) = next_idem_key(&mut lock(&ctx.seen), &mut rng, true) else {
            return;
        };
        if !idem_attempt(&ctx, &base, key, replay_check).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..10))).await;
    }
}

/// One attempt under key `key`; false when the server is gone (the key is retried later).
pub(super) async fn idem_attempt(ctx: &Ctx, base: &str, key: u64, replay_check: bool) -> bool {
    let request = ctx
        .idem
        .post(format!("{base}/v1/chat/completions"))
        .header("idempotency-key", format!("crash-loop-{key}"))
        .json(&idem_body(key));
    let answered = match request.send().await {
        Ok(response) => {
            let status = response.status();
            let id = request_id(response.headers());
            let replayed = response.headers().get("idempotent-replayed").is_some();
            response
                .text()
                .await
                .ok()
                .map(|text| (status, id, replayed, text))
        }
        Err(_) => None,
    };
    let mut guard = lock(&ctx.seen);
    let seen = &mut *guard;
    seen.idem.get_mut(&key).unwrap().attempts += 1;
    let Some((status, id, replayed, text)) = answered else {
        seen.counts.idem_cut += 1;
        if !replay_check {
            seen.idem_pending.push_back(key);
        }
        return false;
    };
    // A key whose first attempt a kill cut short is never run again: 409.
    if status == 409 && text.contains("cut short by a restart") && !replay_check {
        seen.counts.idem_interrupted += 1;
        seen.idem.get_mut(&key).unwrap().interrupted = true;
        return true;
    }
    if status != 200 {
        seen.fail(format!("idempotent key {key} answered {status}: {text}"));
        if !replay_check {
            seen.idem_pending.push_back(key);
        }
        return true;
    }
    let body: Value = serde_json::from_str(&text).unwrap();
    let cost = nanos(body["usage"]["cost"].as_str().unwrap());
    let state = seen.idem.get_mut(&key).unwrap();
    if replayed {
        state.replays += 1;
    } else {
        state.fresh.push(id.clone());
    }
    let mut problems = Vec::new();
    if let Some(before) = &state.body {
        if !replayed {
            problems.push(format!(
                "idempotent key {key} ran again ({id}) although its first answer was stored"
            ));
        } else if *before != body {
            problems.push(format!(
                "idempotent key {key} replayed another body: {body} vs {before}"
            ));
        }
    }
    let first = state.body.is_none();
    state.body = Some(body);
    state.cost = Some(cost);
    if replayed {
        seen.counts.idem_replayed += 1;
    } else {
        seen.counts.idem_fresh += 1;
        seen.finish(id, "idem", cost);
    }
    if first {
        seen.idem_done.push(key);
    }
    for problem in problems {
        seen.fail(problem);
    }
    true
}

pub(super) async fn ws_client(ctx: Arc<Ctx>, base: String, stop: Arc<AtomicBool>, mut rng: StdRng) {
    let mut request = format!("{}/v1/ws", base.replacen("http://", "ws://", 1))
        .into_client_request()
        .unwrap();
    let auth = format!("Bearer {}", ctx.demo_key).parse().unwrap();
    request.headers_mut().insert("authorization", auth);
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(request).await else {
        lock(&ctx.seen).counts.ws_cut += 1;
        return;
    };
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        // Two completions at once on the socket: client id → (request id, cost).
        let mut running: HashMap<String, (Option<String>, Option<i64>)> = HashMap::new();
        for n in 0..2 {
            let id = format!("c{round}-{n}");
            let words = rng.random_range(1..8);
            let create = json!({"type": "chat.completion.create", "id": id, "request": {
                "model": "stream", "stream": true,
                "messages": [{"role": "user", "content": "socket ".repeat(words)}]}});
            if ws.send(Message::text(create.to_string())).await.is_err() {
                lock(&ctx.seen).counts.ws_cut += 1;
                return;
            }
            running.insert(id, (None, None));
        }
        while running.values().any(|(_, cost)| cost.is_none()) {
            let text = match ws.next().await {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                _ => {
                    lock(&ctx.seen).counts.ws_cut += 1;
                    return;
                }
            };
            let message: Value = serde_json::from_str(&text).unwrap();
            let id = message["id"].as_str().unwrap_or_default().to_owned();
            let Some(entry) = running.get_mut(&id) else {
                lock(&ctx.seen).fail(format!("ws message for no completion: {text}"));
                continue;
            };
            match message["type"].as_str() {
                Some("chunk") => {
                    let chunk_id = message["chunk"]["id"].as_str().unwrap();
                    let request = chunk_id.strip_prefix("chatcmpl-").unwrap().to_owned();
                    if entry.0.get_or_insert_with(|| request.clone()) != &request {
                        lock(&ctx.seen).fail(format!("ws completion {id} changed request: {text}"));
                    }
                }
                Some("done") => {
                    let cost = nanos(message["cost"].as_str().unwrap());
                    entry.1 = Some(cost);
                    let mut seen = lock(&ctx.seen);
                    match entry.0.clone() {
                        Some(request) => {
                            seen.counts.ws_done += 1;
                            seen.finish(request, "ws", cost);
                        }
                        None => seen.fail(format!("ws completion {id} done without a chunk")),
                    }
                }
                _ => {
                    entry.1 = Some(0);
                    lock(&ctx.seen).fail(format!("ws: {text}"));
                }
            }
        }
    }
}

/// Delivers `event` signed now; `None` when no status came back.
pub(super) async fn deliver(ctx: &Ctx, base: &str, event: &Value) -> Option<(u16, Option<Value>)> {
    let body = event.to_string();
    let signature = sign(body.as_bytes(), WEBHOOK_SECRET, now_secs());
    let response = ctx
        .plain
        .post(format!("{base}/stripe/webhook"))
        .header("content-type", "application/json; charset=utf-8")
        .header("stripe-signature", signature)
        .body(body)
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.json::<Value>().await.ok()))
}

pub(super) fn event_session(event: &Value) -> String {
    event["data"]["object"]["id"].as_str().unwrap().to_owned()
}

/// Delivers an event and records what came back; false when the server is gone.
pub(super) async fn deliver_and_record(ctx: &Ctx, base: &str, event: Value) -> bool {
    let session = event_session(&event);
    let answer = deliver(ctx, base, &event).await;
    let mut seen = lock(&ctx.seen);
    match answer {
        None => {
            seen.counts.webhooks_cut += 1;
            seen.unanswered.insert(session);
            seen.redeliver.push_back(event);
            false
        }
        Some((status, body)) if (200..300).contains(&status) => {
            seen.counts.webhooks_2xx += 1;
            let outcome = body.map(|b| b["outcome"].as_str().unwrap_or("?").to_owned());
            seen.acked.entry(session).or_default().push(outcome);
            seen.delivered.push(event);
            true
        }
        Some((status, body)) => {
            seen.fail(format!("webhook answered {status}: {body:?}"));
            seen.redeliver.push_back(event);
            true
        }
    }
}

pub(super) async fn webhook_client(
    ctx: Arc<Ctx>,
    base: String,
    stop: Arc<AtomicBool>,
    mut rng: StdRng,
) {
    while !stop.load(Ordering::Relaxed) {
        let event = {
            let mut seen = lock(&ctx.seen);
            if let Some(event) = seen.redeliver.pop_front() {
                Some(event)
            } else if !seen.delivered.is_empty() && rng.random_ratio(1, 4) {
                let again = seen.delivered[rng.random_range(0..seen.delivered.len())].clone();
                if rng.random_bool(0.5) {
                    // Stripe's retry of the same event…
                    Some(again)
                } else {
                    // …or another event for the same paid session.
                    let object = again["data"]["object"].clone();
                    Some(
                        ctx.stripe
                            .event("checkout.session.async_payment_succeeded", object),
                    )
                }
            } else {
                None
            }
        };
        let event = match event {
            Some(event) => event,
            None => {
                let cents = rng.random_range(500..5000);
                let amount = format!("{}.{:02}", cents / 100, cents % 100);
                let url = format!("{base}/v1/topups");
                let Ok(response) = ctx
                    .demo
                    .post(url)
                    .json(&json!({"amount_usd": amount}))
                    .send()
                    .await
                else {
                    lock(&ctx.seen).counts.topups_cut += 1;
                    return;
                };
                let status = response.status();
                let Ok(body) = response.json::<Value>().await else {
                    lock(&ctx.seen).counts.topups_cut += 1;
                    return;
                };
                if status != 200 {
                    lock(&ctx.seen).fail(format!("top-up answered {status}: {body}"));
                    continue;
                }
                let id = body["id"].as_str().unwrap();
                let session = ctx
                    .stripe
                    .session(id)
                    .expect("the fake Stripe saw the session");
                assert_eq!(session.amount_cents(), cents, "{body}");
                lock(&ctx.seen)
                    .sessions
                    .insert(id.to_owned(), cents * 10_000_000);
                ctx.stripe.completed(&session)
            }
        };
        if !deliver_and_record(&ctx, &base, event).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..20))).await;
    }
}

pub(super) async fn admin_client(
    ctx: Arc<Ctx>,
    base: String,
    stop: Arc<AtomicBool>,
    mut rng: StdRng,
) {
    while !stop.load(Ordering::Relaxed) {
        let amount = rng.random_range(1..=50_000_000i64);
        let debit = rng.random_ratio(1, 3);
        let (path, signed) = if debit {
            ("debit", -amount)
        } else {
            ("credit", amount)
        };
        let reason = {
            let mut seen = lock(&ctx.seen);
            seen.credit_next += 1;
            format!("crash loop {path} {}", seen.credit_next)
        };
        let url = format!("{base}/admin/accounts/{}/{path}", ctx.demo_account);
        let body = json!({"amount_usd": Nanos::new(amount).to_string(), "reason": reason});
        let answer = ctx
            .plain
            .post(url)
            .bearer_auth(&ctx.admin_token)
            .json(&body)
            .send()
            .await;
        let alive = {
            let mut seen = lock(&ctx.seen);
            match answer {
                Err(_) => {
                    seen.counts.credits_cut += 1;
                    seen.credits_unknown.insert(reason, signed);
                    false
                }
                Ok(response) if response.status() == 200 => {
                    seen.counts.credits_ok += 1;
                    seen.credits_ok.insert(reason, signed);
                    true
                }
                Ok(response) => {
                    let status = response.status();
                    seen.fail(format!("admin {path} answered {status}"));
                    true
                }
            }
        };
        if !alive {
            return;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..20))).await;
    }
}

/// Runs every kind of client against `base` until `stop`.
pub(super) fn spawn_load(
    ctx: &Arc<Ctx>,
    base: &str,
    stop: &Arc<AtomicBool>,
    rng: &mut StdRng,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let mut next_rng = || StdRng::seed_from_u64(rng.random());
    for _ in 0..2 {
        tasks.push(tokio::spawn(sse_client(
            ctx.clone(),
            base.to_owned(),
            stop.clone(),
            next_rng(),
        )));
        tasks.push(tokio::spawn(idem_client(
            ctx.clone(),
            base.to_owned(),
            stop.clone(),
            next_rng(),
        )));
    }
    tasks.push(tokio::spawn(unary_client(
        ctx.clone(),
        base.to_owned(),
        stop.clone(),
        next_rng(),
    )));
    tasks.push(tokio::spawn(ws_client(
        ctx.clone(),
        base.to_owned(),
        stop.clone(),
        next_rng(),
    )));
    tasks.push(tokio::spawn(webhook_client(
        ctx.clone(),
        base.to_owned(),
        stop.clone(),
        next_rng(),
    )));
    tasks.push(tokio::spawn(admin_client(
        ctx.clone(),
        base.to_owned(),
        stop.clone(),
        next_rng(),
    )));
    tasks
}
