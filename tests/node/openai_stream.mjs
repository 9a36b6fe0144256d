// Streams one OpenAI request (chat completions or Responses) with the official `openai`
// npm SDK and prints, one JSON object a line, the text deltas, then the whole text, or
// the error the SDK threw.
//
// Usage: node openai_stream.mjs BASE_URL chat|responses [--script NAME] [--idle-timeout MS]
//   --script        the scripted upstream's `x-upstream-script` header
//   --idle-timeout  fail the body after this many ms without a byte (any byte, a
//                   keepalive too, restarts it): a read timeout, as SDK users set one
// Exit status: 0 when the whole text was printed, 1 when the SDK threw, 2 on bad usage.
import OpenAI from "openai";
import { Agent, Response, fetch as undiciFetch } from "undici";

function print(line) {
  process.stdout.write(JSON.stringify(line) + "\n");
}

function parseArgs(argv) {
  const [baseURL, kind, ...rest] = argv;
  if (!baseURL || !["chat", "responses"].includes(kind)) throw new Error("BASE_URL chat|responses");
  const options = { baseURL, kind, script: "complete", idleTimeout: 0 };
  for (let i = 0; i < rest.length; i++) {
    if (rest[i] === "--script") options.script = rest[++i];
    else if (rest[i] === "--idle-timeout") options.idleTimeout = Number(rest[++i]);
    else throw new Error(`unknown option ${rest[i]}`);
  }
  return options;
}

// The response with a body that errors after `ms` without a byte (0: as it is).
function watchIdle(response, ms) {
  if (!ms || !response.body) return response;
  let timer;
  const arm = (controller) => {
    clearTimeout(timer);
    timer = setTimeout(() => controller.error(new Error(`idle: no bytes for ${ms} ms`)), ms);
    timer.unref();
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

async function main() {
  let options;
  try {
    options = parseArgs(process.argv.slice(2));
  } catch (error) {
    process.stderr.write(`openai_stream.mjs: ${error.message}\n`);
    return 2;
  }
  const dispatcher = new Agent();
  const client = new OpenAI({
    baseURL: options.baseURL + "/v1",
    apiKey: "sk-test",
    maxRetries: 0,
    timeout: 60_000,
    defaultHeaders: { "x-upstream-script": options.script },
    fetch: async (url, init) =>
      watchIdle(await undiciFetch(url, { ...init, dispatcher }), options.idleTimeout),
  });
  const text = [];
  try {
    if (options.kind === "chat") {
      const stream = await client.chat.completions.create({
        model: "gpt-4o-mini",
        messages: [{ role: "user", content: "hi" }],
        stream: true,
      });
      for await (const chunk of stream) {
        const delta = chunk.choices[0]?.delta?.content;
        if (delta) text.push(delta);
      }
    } else {
      const stream = await client.responses.create({ model: "gpt-4o-mini", input: "hi", stream: true });
      for await (const event of stream) {
        if (event.type === "response.output_text.delta") text.push(event.delta);
      }
    }
    print({ kind: "text", text: text.join("") });
    return 0;
  } catch (error) {
    print({
      kind: "error",
      class: error?.constructor?.name ?? typeof error,
      isAPIError: error instanceof OpenAI.APIError,
      isConnectionError: error instanceof OpenAI.APIConnectionError,
      type: error?.type ?? null,
      message: String(error?.message ?? error),
      text: text.join(""),
    });
    return 1;
  } finally {
    await dispatcher.close().catch(() => {});
  }
}

process.exitCode = await main();
