//! A full disk under the data dir (a tmpfs, so these tests need root):
//! refused with 503, nothing charged, and whole again after a restart.

use super::*;

/// A tmpfs mounted over a fresh directory, unmounted on drop (also when the
/// test fails). Mounting needs root; without it the test fails, never skips.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = support::temp_dir("diskfull");
        let output = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tokun-faults"])
            .arg(&dir)
            .output();
        let failure = match output {
            Ok(out) if out.status.success() => return Tmpfs { dir },
            Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
            Err(error) => error.to_string(),
        };
        let _ = std::fs::remove_dir(&dir);
        panic!(
            "the disk-full test mounts a small tmpfs as the data dir and needs root \
             (CAP_SYS_ADMIN) to do it; `mount -t tmpfs` failed: {failure}"
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let umount = |lazy: bool| {
            let mut command = std::process::Command::new("umount");
            if lazy {
                command.arg("-l");
            }
            command
                .arg(&self.dir)
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !umount(false) && !umount(true) {
            eprintln!("could not unmount {}", self.dir.display());
            return;
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Writes `path` until the filesystem has no byte left.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    for block in [1 << 20, 4096, 1] {
        let bytes = vec![0u8; block];
        loop {
            match file.write_all(&bytes) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::StorageFull => break,
                Err(error) => panic!("filling the tmpfs: {error}"),
            }
        }
    }
}

async fn ready(h: &Harness) -> (u16, Value) {
    let response = h.anonymous.get(h.url("/readyz")).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn config_in(upstream: &FakeUpstream, data_dir: &Path) -> tokun::config::Config {
    let text = upstream_config(upstream, "");
    let mut config =
        tokun::config::Config::parse(&text, |name| std::env::var(name).ok()).expect("config");
    config.server.data_dir = data_dir.to_path_buf();
    config
}

/// Fills the tmpfs, then makes ledger writes (admin credits of $0.01 to
/// `ops`, each awaited until durable) until one fails for want of space: the
/// ledger is then not writable. Returns how many credits went through.
async fn exhaust_the_disk(h: &Harness, filler: &Path, ops: &str) -> u64 {
    let path = filler.to_path_buf();
    tokio::task::spawn_blocking(move || fill(&path))
        .await
        .unwrap();
    let url = format!("/admin/accounts/{ops}/credit");
    for credited in 0..2000 {
        let body = json!({"amount_usd": "0.01", "reason": "until the disk is full"});
        let response = support::admin_post(h, &url, body).await;
        if response.status() != 200 {
            let (_, error) = error_of(response, 503).await;
            assert_eq!(error["code"], "unavailable", "{error}");
            return credited;
        }
    }
    panic!("the ledger never noticed the full disk");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_data_dir_refuses_with_503_charges_nothing_and_recovers_after_restart() {
    let tmpfs = Tmpfs::mount("64m");
    let data_dir = tmpfs.dir.join("data");
    let filler = tmpfs.dir.join("filler");
    let upstream = FakeUpstream::start().await.unwrap();
    tokio::time::timeout(Duration::from_secs(120), async {
        let h = Harness::start_with(config_in(&upstream, &data_dir)).await;
        let (_, key) = new_account(&h, "full@example.com", "5").await;
        let (ops, ops_key) = new_account(&h, "ops@example.com", "1").await;
        let client = client_with_key(&key);
        let response = post(&client, &h, &chat("fake-model", false)).await;
        assert_eq!(response.status(), 200);
        let charged = nanos(&response.json::<Value>().await.unwrap()["usage"]["cost"]);

        let credited = exhaust_the_disk(&h, &filler, &ops).await;
        let (status, body) = ready(&h).await;
        assert_eq!((status, &body["ledger_writable"]), (503, &json!(false)));
        let failed = metric(&h, "tokun_ledger_failed_batches_total", &[]).await;
        assert!(failed >= 1.0, "{failed}");
        // Requests are refused before any hold or upstream call.
        let calls = upstream.calls();
        for stream in [true, false] {
            let response = post(&client, &h, &chat("fake-model", stream)).await;
            let (_, error) = error_of(response, 503).await;
            assert_eq!(error["code"], "unavailable", "{error}");
            let message = error["message"].as_str().unwrap();
            assert!(message.contains("nothing was charged"), "{error}");
        }
        assert_eq!(upstream.calls(), calls, "refused before the upstream");

        // Space comes back; the ledger stays refused until a restart.
        std::fs::remove_file(&filler).unwrap();
        assert_eq!(ready(&h).await.0, 503);
        error_of(post(&client, &h, &chat("fake-model", false)).await, 503).await;
        let Harness { server, .. } = h;
        let _ = tokio::time::timeout(Duration::from_secs(30), server.shutdown())
            .await
            .expect("shutdown ends");

        let h = Harness::start_with(config_in(&upstream, &data_dir)).await;
        assert_eq!(ready(&h).await.0, 200);
        let balance = settled_balance(&client, &h).await;
        assert_eq!(balance, CREDIT - charged, "only the answered request");
        assert_eq!(usage_records(&client, &h).await.len(), 1);
        let credits = i64::try_from(credited).unwrap() * 10_000_000;
        let ops_balance = books(&client_with_key(&ops_key), &h).await.0;
        assert_eq!(
            ops_balance,
            1_000_000_000 + credits,
            "credits answered 200 only"
        );
        let response = post(&client, &h, &chat("fake-model", false)).await;
        assert_eq!(response.status(), 200);
        let cost = nanos(&response.json::<Value>().await.unwrap()["usage"]["cost"]);
        assert_eq!(settled_balance(&client, &h).await, balance - cost);
        h.server.shutdown().await.unwrap();
    })
    .await
    .expect("the disk-full test took over 120 s");
    drop(tmpfs);
}

/// A non-streamed request whose hold is already durable when the ledger stops
/// being writable is answered 503 "nothing was charged", and that stays true:
/// its answer was withheld (it is only sent once settled), so the hold was
/// written with a zero checkpoint and crash recovery settles it at zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_when_the_disk_fills_is_not_charged_after_restart() {
    let tmpfs = Tmpfs::mount("64m");
    let data_dir = tmpfs.dir.join("data");
    let filler = tmpfs.dir.join("filler");
    let upstream = FakeUpstream::start().await.unwrap();
    tokio::time::timeout(Duration::from_secs(120), async {
        let h = Harness::start_with(config_in(&upstream, &data_dir)).await;
        let (_, key) = new_account(&h, "inflight@example.com", "5").await;
        let (ops, _) = new_account(&h, "ops@example.com", "1").await;
        let client = client_with_key(&key);
        upstream.push(Script {
            first_byte_delay: Duration::from_secs(2),
            ..Script::default()
        });
        let call = tokio::spawn({
            let (client, url) = (client.clone(), h.url("/v1/chat/completions"));
            async move {
                client
                    .post(url)
                    .json(&chat("fake-model", false))
                    .send()
                    .await
                    .unwrap()
            }
        });
        wait_for_holds(&client, &h, 1).await;
        // The hold goes to disk within `ledger.max_unflushed_us` (5 ms).
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(h.server.services().store.open_holds().unwrap().len(), 1);
        exhaust_the_disk(&h, &filler, &ops).await;
        let (_, error) = error_of(call.await.unwrap(), 503).await;
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("nothing was charged"),
            "{error}"
        );
        std::fs::remove_file(&filler).unwrap();
        let Harness { server, .. } = h;
        let _ = tokio::time::timeout(Duration::from_secs(30), server.shutdown())
            .await
            .expect("shutdown ends");

        let h = Harness::start_with(config_in(&upstream, &data_dir)).await;
        let balance = settled_balance(&client, &h).await;
        let entries: Vec<String> = h
            .server
            .services()
            .store
            .entries(0)
            .map(|e| {
                let e = e.unwrap();
                format!("{:?} {} {:?}", e.kind, e.amount.get(), e.request_id)
            })
            .collect();
        assert_eq!(
            balance,
            CREDIT,
            "told 'nothing was charged', charged {} nanos at restart; ledger {entries:#?}",
            CREDIT - balance,
        );
        h.server.shutdown().await.unwrap();
    })
    .await
    .expect("the test took over 120 s");
    drop(tmpfs);
}
