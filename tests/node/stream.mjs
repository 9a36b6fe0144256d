// Streams one Messages request with the official TypeScript SDK and prints, one JSON
// object a line, what the SDK produced: each raw event's type, text and thinking deltas,
// the signature, then the final message, or the error the SDK threw.
//
// Usage: node stream.mjs [BASE_URL] [--http2] [--script JSON] [--idle-timeout MS]
//   BASE_URL        defaults to $ANTHROPIC_BASE_URL
//   --http2         fetch through an undici Agent with allowH2 (HTTP/2 when TLS ALPN picks
//                   it); without it, HTTP/1.1. Trust a test CA with NODE_EXTRA_CA_CERTS.
//   --script        an `x-sim-script` header for the simulated upstream (also $SIM_SCRIPT)
//   --idle-timeout  fail the body after this many ms without a byte, as Claude Code's
//                   byte watchdog does (any byte, a keepalive comment too, restarts it)
// Exit status: 0 when a final message was printed, 1 when the SDK threw, 2 on bad usage.
import Anthropic from "@anthropic-ai/sdk";
import { Agent, Response, fetch as undiciFetch } from "undici";

class IdleTimeout extends Error {
  constructor(ms) {
    super(`idle: no bytes for ${ms} ms`);
    this.name = "IdleTimeout";
  }
}

function parseArgs(argv) {
  const options = {
    baseURL: process.env.ANTHROPIC_BASE_URL,
    http2: false,
    script: process.env.SIM_SCRIPT,
    idleTimeout: 0,
  };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--http2") options.http2 = true;
    else if (argv[i] === "--script") options.script = argv[++i];
    else if (argv[i] === "--idle-timeout") options.idleTimeout = Number(argv[++i]);
    else if (!argv[i].startsWith("--")) options.baseURL = argv[i];
    else throw new Error(`unknown option ${argv[i]}`);
  }
  if (!options.baseURL) throw new Error("a base URL is needed (argument or ANTHROPIC_BASE_URL)");
  return options;
}

function print(line) {
  process.stdout.write(JSON.stringify(line) + "\n");
}

// The response with a body that errors after `ms` without a byte (0: as it is).
function watchIdle(response, ms) {
  if (!ms || !response.body) return response;
  let timer;
  const arm = (controller) => {
    clearTimeout(timer);
    timer = setTimeout(() => controller.error(new IdleTimeout(ms)), ms);
    timer.unref(); // the open request keeps node alive; a spent stream must not
  };
  const watched = response.body.pipeThrough(
    new TransformStream({
      start: arm,
      transform(chunk, controller) {
        arm(controller);
        controller.enqueue(chunk);
      },
      flush: () => clearTimeout(timer),
    }),
  );
  const { status, statusText, headers } = response;
  return new Response(watched, { status, statusText, headers });
}

// Plain fields only: the test reads the class, API error type and message as JSON.
function describeError(error) {
  return {
    kind: "error",
    class: error?.constructor?.name ?? typeof error,
    isAPIError: error instanceof Anthropic.APIError,
    isConnectionError: error instanceof Anthropic.APIConnectionError,
    status: error?.status ?? null,
    type: error?.type ?? null,
    body: error?.error ?? null,
    message: String(error?.message ?? error),
    cause: error?.cause ? String(error.cause.name ?? error.cause) : null,
  };
}

async function main() {
  let options;
  try {
    options = parseArgs(process.argv.slice(2));
  } catch (error) {
    process.stderr.write(`stream.mjs: ${error.message}\n`);
    return 2;
  }
  // Always undici's fetch (a pinned version, not whichever one node bundles); the agent
  // decides the HTTP version.
  const dispatcher = new Agent({ allowH2: options.http2 });
  const client = new Anthropic({
    baseURL: options.baseURL,
    apiKey: "sk-test",
    maxRetries: 0,
    timeout: 60_000,
    fetch: async (url, init) => {
      const response = await undiciFetch(url, { ...init, dispatcher });
      print({ kind: "response", status: response.status, request_id: response.headers.get("request-id") });
      return watchIdle(response, options.idleTimeout);
    },
  });
  const headers = options.script ? { "x-sim-script": options.script } : {};
  try {
    const stream = client.messages.stream(
      {
        model: "claude-sim-1",
        max_tokens: 2048,
        thinking: { type: "enabled", budget_tokens: 1024 },
        messages: [{ role: "user", content: "Think, then answer." }],
      },
      { headers },
    );
    for await (const event of stream) {
      print({ kind: "event", type: event.type });
      if (event.type !== "content_block_delta") continue;
      const delta = event.delta;
      if (delta.type === "text_delta") print({ kind: "text", text: delta.text });
      else if (delta.type === "thinking_delta") print({ kind: "thinking", thinking: delta.thinking });
      else if (delta.type === "signature_delta") print({ kind: "signature", signature: delta.signature });
    }
    print({ kind: "final", message: await stream.finalMessage() });
    return 0;
  } catch (error) {
    print(describeError(error));
    return 1;
  } finally {
    await dispatcher.close().catch(() => {});
  }
}

process.exitCode = await main();
