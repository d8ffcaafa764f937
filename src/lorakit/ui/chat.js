// lorakit ui: chat with a run, the conversation kept in the page. Loaded before page.js, which calls
// sendChat and newChat; every value from the server goes in with textContent, never as HTML.
"use strict";

// The conversation is kept in the page (current.chat) and sent whole each time, as lorakit chat keeps it;
// the answers come as JSON lines, piece by piece: the tuned model's, then the base's. The tuned answer
// becomes the assistant's turn; the base model's is shown beside it, never sent back.
async function sendChat() {
  const prompt = $("chat-input").value;
  if (!prompt.trim() || !current) return;
  const name = current.name, chat = current.chat;
  const messages = [...chat, {role: "user", content: prompt}];
  const response = await fetch(`/api/runs/${encodeURIComponent(name)}/chat`, {method: "POST",
    credentials: "same-origin", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({messages, base: $("chat-base").checked, max_new_tokens: 64})});
  if (!response.ok) { const data = await response.json().catch(() => ({})); say(data.error || response.statusText); return; }
  say("");
  $("chat-input").value = "";
  const box = $("chat-answers");
  const asked = document.createElement("div");
  asked.className = "turn-user";
  asked.textContent = prompt;
  box.appendChild(asked);
  const sides = {};
  for await (const event of jsonLines(response)) {
    showPiece(box, sides, event);
    if (event.done && event.side === "tuned" && current && current.chat === chat) {
      // The oldest turns the server left out to fit the context are left out here too, as lorakit chat does.
      chat.splice(0, chat.length, ...messages.slice(event.dropped), {role: "assistant", content: event.text});
    }
  }
}

function newChat() {
  if (current) current.chat = [];
  $("chat-answers").textContent = "";
  $("chat-input").value = "";
}

// Each whole line of a streamed body, parsed; a line cut between two chunks waits for the next one.
async function* jsonLines(response) {
  const chunks = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let rest = "";
  while (true) {
    const chunk = await chunks.read();
    if (chunk.done) return;
    const parts = (rest + chunk.value).split("\n");
    rest = parts.pop();
    yield* parts.filter((p) => p.trim()).map((p) => JSON.parse(p));
  }
}

function showPiece(box, sides, event) {
  if (!sides[event.side]) {
    const div = document.createElement("div");
    div.className = "answer answer-" + event.side;
    div.dataset.chunks = 0;
    const head = document.createElement("b");
    head.textContent = t(event.side) + ": ";
    const body = document.createElement("span");
    body.className = "answer-text";
    div.append(head, body);
    box.appendChild(div);
    sides[event.side] = div;
  }
  const div = sides[event.side], body = div.querySelector(".answer-text");
  if (event.done) { body.textContent = event.text; div.dataset.done = "true"; return; }
  body.textContent += event.piece;
  div.dataset.chunks = +div.dataset.chunks + 1;
}
