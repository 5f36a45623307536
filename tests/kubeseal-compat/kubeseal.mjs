// Test oracle for tests/unit/test_kubeseal_compat.py: kubeseal's hybrid format outside Python.
//
// One JSON request on stdin, the answer on stdout:
//   {"op": "seal", "cert": PEM, "namespace": ns, "value": text}
//       -> the value sealed by @linode/kubeseal-encrypt (WebCrypto). That package takes a public
//          key, not a certificate, and always uses the namespace as the OAEP label (the
//          namespace-wide scope).
//   {"op": "open", "key": PEM, "label": text, "sealed": base64}
//       -> base64 of the plaintext, opened step by step with Node's WebCrypto (no Python involved).
import { X509Certificate, createPrivateKey, webcrypto } from "node:crypto";

// Node 18 (Debian's) has WebCrypto but not yet as globalThis.crypto, which the package expects.
if (!globalThis.crypto?.subtle) {
  globalThis.crypto = webcrypto;
}
const { encryptSecretItem } = await import("@linode/kubeseal-encrypt");

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) {
    chunks.push(chunk);
  }
  return JSON.parse(Buffer.concat(chunks).toString("utf8"));
}

async function seal({ cert, namespace, value }) {
  const spki = new X509Certificate(cert).publicKey.export({ type: "spki", format: "pem" });
  return encryptSecretItem(spki, namespace, value);
}

async function open({ key, label, sealed }) {
  const subtle = webcrypto.subtle;
  const bytes = Buffer.from(sealed, "base64");
  const rsaLength = bytes.readUInt16BE(0);
  const der = createPrivateKey(key).export({ type: "pkcs8", format: "der" });
  const rsaKey = await subtle.importKey("pkcs8", der, { name: "RSA-OAEP", hash: "SHA-256" }, false, ["decrypt"]);
  const sessionKey = await subtle.decrypt(
    { name: "RSA-OAEP", label: new TextEncoder().encode(label) },
    rsaKey,
    bytes.subarray(2, 2 + rsaLength),
  );
  const aesKey = await subtle.importKey("raw", sessionKey, { name: "AES-GCM" }, false, ["decrypt"]);
  const plaintext = await subtle.decrypt(
    { name: "AES-GCM", iv: new Uint8Array(12), tagLength: 128 },
    aesKey,
    bytes.subarray(2 + rsaLength),
  );
  return Buffer.from(plaintext).toString("base64");
}

const request = await readStdin();
const operations = { seal, open };
if (!(request.op in operations)) {
  throw new Error(`unknown op ${request.op}`);
}
process.stdout.write(await operations[request.op](request));
