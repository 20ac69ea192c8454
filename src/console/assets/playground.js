// tokun console: the playground. Asks /playground/ticket for a single-use
// WebSocket ticket (the session's cookie and CSRF token), opens /v1/ws with
// it, sends one chat.completion.create, shows the tokens as they arrive and
// then the usage and cost the server reports in `done`. Stop sends the
// protocol's cancel; the completion still ends with `done`, billed for what
// was generated. Money is only ever displayed as the server's decimal
// string, never computed here. No framework, no inline handlers (CSP).
(function () {
  "use strict";

  var form = document.getElementById("pg-form");
  if (!form) {
    return;
  }
  var fields = document.getElementById("pg-fields");
  var send = document.getElementById("pg-send");
  var stop = document.getElementById("pg-stop");
  var model = document.getElementById("pg-model");
  var system = document.getElementById("pg-system");
  var message = document.getElementById("pg-message");
  var maxTokens = document.getElementById("pg-max-tokens");
  var temperature = document.getElementById("pg-temperature");
  var output = document.getElementById("pg-output");
  var status = document.getElementById("pg-status");
  var errorBox = document.getElementById("pg-error");
  var csrf = form.querySelector("input[name=csrf]").value;

  // The completion in progress: { socket, id, stopping, ended, started, failed }.
  var run = null;
  var runs = 0;

  fields.disabled = false;
  status.textContent = "Write a message and press Send.";

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (!run) {
      start();
    }
  });

  stop.addEventListener("click", function () {
    if (!run || run.stopping || run.ended) {
      return;
    }
    run.stopping = true;
    stop.disabled = true;
    if (run.socket && run.socket.readyState === WebSocket.OPEN && run.started) {
      run.socket.send(JSON.stringify({ type: "cancel", id: run.id }));
      setStatus("Stopping…");
    } else {
      // Nothing was sent yet: nothing to bill.
      finish(run, "Stopped before the request was sent. Nothing was billed.");
    }
  });

  function start() {
    var request = buildRequest();
    if (!request) {
      return;
    }
    clearError();
    output.textContent = "";
    output.classList.remove("pg-stopped");
    runs += 1;
    var current = { socket: null, id: "pg-" + runs, stopping: false, ended: false, started: false, failed: false };
    run = current;
    setBusy(true);
    setStatus("Connecting…");
    // On a phone the output is below the form: bring it up, Stop with it.
    if (output.getBoundingClientRect().bottom > window.innerHeight) {
      output.scrollIntoView({ block: "nearest" });
    }
    fetch(form.dataset.ticketUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf, Accept: "application/json" },
    })
      .then(function (response) {
        return response
          .json()
          .catch(function () {
            return null;
          })
          .then(function (body) {
            if (!response.ok || !body || !body.ticket) {
              throw new Error(ticketRefusal(response.status, body));
            }
            return body.ticket;
          });
      })
      .then(function (ticket) {
        if (current.ended) {
          return;
        }
        open(current, ticket, request);
      })
      .catch(function (error) {
        var text = error && error.message && error.message !== "Failed to fetch"
          ? error.message
          : "Could not reach tokun. Check your connection and try again.";
        fail(current, text);
        finish(current, "Not sent.");
      });
  }

  function open(current, ticket, request) {
    var scheme = location.protocol === "https:" ? "wss:" : "ws:";
    var url = scheme + "//" + location.host + form.dataset.wsPath + "?ticket=" + encodeURIComponent(ticket);
    var socket = new WebSocket(url);
    current.socket = socket;
    socket.addEventListener("open", function () {
      if (current.ended) {
        socket.close(1000);
        return;
      }
      socket.send(JSON.stringify({ type: "chat.completion.create", id: current.id, request: request }));
      current.started = true;
      setStatus(current.stopping ? "Stopping…" : "Waiting for the first token…");
      if (current.stopping) {
        socket.send(JSON.stringify({ type: "cancel", id: current.id }));
      }
    });
    socket.addEventListener("message", function (event) {
      onMessage(current, event.data);
    });
    socket.addEventListener("close", function (event) {
      if (!current.ended) {
        fail(current, closeReason(event));
        finish(current, "The connection closed before the completion finished.");
      }
    });
  }

  function onMessage(current, data) {
    var msg;
    try {
      msg = JSON.parse(data);
    } catch (e) {
      return;
    }
    if (current.ended || (msg.id !== current.id && msg.id !== null)) {
      return;
    }
    if (msg.type === "chunk") {
      var choice = msg.chunk && msg.chunk.choices && msg.chunk.choices[0];
      var text = choice && choice.delta && choice.delta.content;
      if (text) {
        output.append(text);
        if (!current.stopping) {
          setStatus("Streaming…");
        }
      }
    } else if (msg.type === "completion") {
      var whole = msg.completion && msg.completion.choices && msg.completion.choices[0];
      if (whole && whole.message && whole.message.content) {
        output.append(whole.message.content);
      }
    } else if (msg.type === "error") {
      // After a cancel, an unknown id only means the completion had ended.
      if (current.stopping && msg.error && msg.error.code === "completion_not_found") {
        return;
      }
      fail(current, msg.error || {});
      // Before any token an error ends the completion (nothing billed);
      // mid-stream a `done` follows with what was billed.
      if (!output.textContent) {
        finish(current, "Not completed. Nothing was billed.");
      }
    } else if (msg.type === "done") {
      finish(current, null, msg);
    }
  }

  function finish(current, text, done) {
    if (current.ended) {
      return;
    }
    current.ended = true;
    if (done) {
      showUsage(current, done);
    } else if (text) {
      setStatus(text);
    }
    if (current.socket && current.socket.readyState <= WebSocket.OPEN) {
      current.socket.close(1000);
    }
    if (run === current) {
      run = null;
      var stopHadFocus = document.activeElement === stop;
      setBusy(false);
      // Stop is disabled now: keep the keyboard where the next step is.
      if (stopHadFocus) {
        send.focus();
      }
    }
  }

  function showUsage(current, done) {
    var usage = done.usage || {};
    var prompt = usage.prompt_tokens || 0;
    var completion = usage.completion_tokens || 0;
    var cost = done.cost || usage.cost || "0";
    status.textContent = "";
    if (current.stopping) {
      output.classList.add("pg-stopped");
      var stopped = document.createElement("strong");
      stopped.textContent = "Stopped";
      status.append(stopped, " — billed for " + plural(completion, "token") + " generated (+ " +
        plural(prompt, "prompt token") + ") · ");
    } else {
      status.append(plural(prompt, "prompt token") + " + " + plural(completion, "completion token") + " · ");
    }
    var strong = document.createElement("strong");
    strong.className = "pg-cost";
    strong.textContent = "Cost $" + cost;
    status.append(strong);
    if (usage.estimated) {
      status.append(" · tokens counted by tokun");
    }
  }

  function buildRequest() {
    var text = message.value;
    if (!text.trim()) {
      showError("Write a message first.");
      message.focus();
      return null;
    }
    var messages = [];
    if (system.value.trim()) {
      messages.push({ role: "system", content: system.value });
    }
    messages.push({ role: "user", content: text });
    var request = { model: model.value, stream: true, messages: messages };
    var max = maxTokens.value.trim();
    if (max) {
      if (!/^[0-9]+$/.test(max) || Number(max) < 1) {
        showError("Max tokens must be a whole number of at least 1.");
        maxTokens.focus();
        return null;
      }
      request.max_tokens = Number(max);
    }
    var temp = temperature.value.trim();
    if (temp) {
      var t = Number(temp);
      if (!/^[0-9]*\.?[0-9]+$/.test(temp) || t < 0 || t > 2) {
        showError("Temperature must be a number from 0 to 2.");
        temperature.focus();
        return null;
      }
      request.temperature = t;
    }
    return request;
  }

  // An error in place: the server's message, with a way on where there is one.
  function fail(current, error) {
    current.failed = true;
    showError(error);
  }

  function showError(error) {
    var text = typeof error === "string" ? error : error.message || "The request failed.";
    errorBox.textContent = "";
    var p = document.createElement("p");
    p.textContent = text;
    errorBox.append(p);
    if (typeof error === "object" && error.code === "insufficient_credits") {
      var more = document.createElement("p");
      var link = document.createElement("a");
      link.href = "/billing";
      link.textContent = "Top up on the Billing page";
      more.append(link, " to keep going.");
      errorBox.append(more);
    }
    errorBox.hidden = false;
  }

  function clearError() {
    errorBox.hidden = true;
    errorBox.textContent = "";
  }

  function ticketRefusal(code, body) {
    if (body && body.error && body.error.message) {
      return body.error.message;
    }
    if (code === 403) {
      return "You are signed out, or this page has expired. Reload it (sign in again if asked) and try once more.";
    }
    return "tokun could not start the playground (error " + code + "). Try again in a moment.";
  }

  function closeReason(event) {
    if (event.code === 4401) {
      return "The playground's ticket was refused. Reload the page and try again.";
    }
    var why = event.reason ? ": " + event.reason : ".";
    return "The connection to tokun closed (code " + event.code + ")" + why;
  }

  function setBusy(busy) {
    send.disabled = busy;
    stop.disabled = !busy;
    output.setAttribute("aria-busy", busy ? "true" : "false");
    form.classList.toggle("pg-busy", busy);
  }

  function setStatus(text) {
    status.textContent = text;
  }

  function plural(n, word) {
    return n + " " + word + (n === 1 ? "" : "s");
  }
})();
