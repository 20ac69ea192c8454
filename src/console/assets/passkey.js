// Passkeys in the tokun console: "Add a passkey" on /account and "Sign in
// with a passkey" on /login. The server makes and checks every challenge;
// this only carries bytes between navigator.credentials and its JSON
// endpoints, and shows what went wrong next to the button.
(function () {
  'use strict';
  if (!window.PublicKeyCredential || !navigator.credentials) return;

  function toBuffer(text) {
    var b64 = text.replace(/-/g, '+').replace(/_/g, '/');
    while (b64.length % 4) b64 += '=';
    var binary = atob(b64);
    var bytes = new Uint8Array(binary.length);
    for (var i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes.buffer;
  }

  function toText(buffer) {
    var bytes = new Uint8Array(buffer);
    var binary = '';
    for (var i = 0; i < bytes.length; i++) binary += String.fromCharCode(bytes[i]);
    return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }

  async function post(url, body) {
    var response = await fetch(url, {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'content-type': 'application/json', accept: 'application/json' },
      body: JSON.stringify(body)
    });
    var data = {};
    try { data = await response.json(); } catch (ignored) { /* an HTML error page */ }
    if (!response.ok) {
      throw new Error(data.error || (response.status === 403
        ? 'You are signed out, or this page is stale. Reload it and try again.'
        : 'Something went wrong. Try again.'));
    }
    return data;
  }

  function explain(error) {
    if (error && error.name === 'NotAllowedError') {
      return 'The passkey request was cancelled or timed out. Try again when you are ready.';
    }
    if (error && error.name === 'InvalidStateError') {
      return 'This device already holds a passkey for your account.';
    }
    return (error && error.message) || 'Something went wrong. Try again.';
  }

  async function register(form) {
    var csrf = form.elements.csrf.value;
    var options = (await post('/account/passkeys/register/start', { csrf: csrf })).publicKey;
    options.challenge = toBuffer(options.challenge);
    options.user.id = toBuffer(options.user.id);
    (options.excludeCredentials || []).forEach(function (c) { c.id = toBuffer(c.id); });
    var credential = await navigator.credentials.create({ publicKey: options });
    var done = await post('/account/passkeys/register/finish', {
      csrf: csrf,
      name: form.elements.name.value,
      credential: {
        id: credential.id,
        rawId: toText(credential.rawId),
        type: credential.type,
        response: {
          attestationObject: toText(credential.response.attestationObject),
          clientDataJSON: toText(credential.response.clientDataJSON)
        },
        extensions: {}
      }
    });
    window.location.assign(done.redirect || '/account');
  }

  async function signIn() {
    var started = await post('/login/passkey/start', {});
    var options = started.options.publicKey;
    options.challenge = toBuffer(options.challenge);
    (options.allowCredentials || []).forEach(function (c) { c.id = toBuffer(c.id); });
    var credential = await navigator.credentials.get({ publicKey: options });
    var response = credential.response;
    var done = await post('/login/passkey/finish', {
      id: started.id,
      credential: {
        id: credential.id,
        rawId: toText(credential.rawId),
        type: credential.type,
        response: {
          authenticatorData: toText(response.authenticatorData),
          clientDataJSON: toText(response.clientDataJSON),
          signature: toText(response.signature),
          userHandle: response.userHandle ? toText(response.userHandle) : null
        },
        extensions: {}
      }
    });
    window.location.assign(done.redirect || '/');
  }

  function wire(root, button, run) {
    var status = root.querySelector('.passkey-status');
    var busy = false;
    button.addEventListener('click', async function (event) {
      event.preventDefault();
      if (busy) return;
      busy = true;
      button.setAttribute('aria-busy', 'true');
      status.textContent = '';
      try {
        await run();
      } catch (error) {
        status.textContent = explain(error);
      } finally {
        busy = false;
        button.removeAttribute('aria-busy');
      }
    });
  }

  document.querySelectorAll('[data-passkey=signin]').forEach(function (root) {
    root.hidden = false;
    wire(root, root.querySelector('button'), signIn);
  });
  document.querySelectorAll('form[data-passkey=register]').forEach(function (form) {
    form.hidden = false;
    wire(form, form.querySelector('button[type=submit]'), function () { return register(form); });
  });
})();
