// Sealpost's only script: what plain HTML forms cannot do. It turns the server's WebAuthn
// options (JSON with base64url fields) into navigator.credentials calls and posts the
// answers back. Loaded as a file (the Content-Security-Policy allows no inline script).
(function () {
  "use strict";

  function toBuffer(text) {
    var base64 = text.replace(/-/g, "+").replace(/_/g, "/");
    while (base64.length % 4) base64 += "=";
    var raw = atob(base64);
    var bytes = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    return bytes.buffer;
  }

  function toText(buffer) {
    var bytes = new Uint8Array(buffer);
    var raw = "";
    for (var i = 0; i < bytes.length; i++) raw += String.fromCharCode(bytes[i]);
    return btoa(raw).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function csrf() {
    var meta = document.querySelector('meta[name="csrf"]');
    return meta ? meta.content : "";
  }

  function show(form, message) {
    var out = form.querySelector(".passkey-status");
    if (out) out.textContent = message;
  }

  async function post(url, body) {
    var response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
      body: JSON.stringify(body),
    });
    var answer = await response.json();
    if (!response.ok) throw new Error(answer.error || response.statusText);
    return answer;
  }

  function creationOptions(options) {
    var key = options.publicKey;
    key.challenge = toBuffer(key.challenge);
    key.user.id = toBuffer(key.user.id);
    (key.excludeCredentials || []).forEach(function (c) { c.id = toBuffer(c.id); });
    return { publicKey: key };
  }

  function requestOptions(options) {
    var key = options.publicKey;
    key.challenge = toBuffer(key.challenge);
    (key.allowCredentials || []).forEach(function (c) { c.id = toBuffer(c.id); });
    return { publicKey: key };
  }

  function registration(credential) {
    var r = credential.response;
    return {
      id: credential.id,
      rawId: toText(credential.rawId),
      type: credential.type,
      response: {
        attestationObject: toText(r.attestationObject),
        clientDataJSON: toText(r.clientDataJSON),
        transports: r.getTransports ? r.getTransports() : [],
      },
      extensions: credential.getClientExtensionResults(),
    };
  }

  function assertion(credential) {
    var r = credential.response;
    return {
      id: credential.id,
      rawId: toText(credential.rawId),
      type: credential.type,
      response: {
        authenticatorData: toText(r.authenticatorData),
        clientDataJSON: toText(r.clientDataJSON),
        signature: toText(r.signature),
        userHandle: r.userHandle ? toText(r.userHandle) : null,
      },
      extensions: credential.getClientExtensionResults(),
    };
  }

  // <form data-passkey="register" data-start="…" data-finish="…">: a name, then the ceremony.
  // <form data-passkey="sign-in" data-start="…" data-finish="…">: an address, then the ceremony.
  document.querySelectorAll("form[data-passkey]").forEach(function (form) {
    form.addEventListener("submit", async function (event) {
      event.preventDefault();
      if (!window.PublicKeyCredential) {
        show(form, "This browser cannot use passkeys.");
        return;
      }
      var fields = {};
      new FormData(form).forEach(function (value, key) { fields[key] = value; });
      try {
        show(form, "Waiting for your passkey…");
        var started = await post(form.dataset.start, fields);
        var answer;
        if (form.dataset.passkey === "register") {
          answer = registration(await navigator.credentials.create(creationOptions(started.options)));
        } else {
          answer = assertion(await navigator.credentials.get(requestOptions(started.options)));
        }
        var done = await post(form.dataset.finish, { ceremony: started.ceremony, credential: answer });
        window.location.assign(done.next);
      } catch (error) {
        show(form, "The passkey did not work: " + error.message);
      }
    });
  });
})();
