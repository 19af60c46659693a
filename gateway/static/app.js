// The gateway's talk page: microphone -> /ws as 16 kHz PCM16, agent audio <- /ws played in order,
// transcripts and per-turn latencies shown, playback marks sent back so the agent knows what was heard.
// Or, with the WebRTC transport: one offer/answer over HTTP (POST /webrtc), Opus both ways, the same JSON
// events on a data channel; the gateway then knows what was played from its own outgoing track. The
// peer connection uses the STUN/TURN servers from GET /webrtc/ice-servers.
"use strict";
const RATE = 16000;
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const vx = (window.voxgrid = { played: {}, audioChunks: 0, finals: [], agentText: {}, latencies: [], events: [] });
vx.rtc = { packetsReceived: 0, totalAudioEnergy: 0 };
let ws = null, ctx = null, micStream = null, playing = [], nextAt = 0, agentLine = {}, partialEl = null;
let pc = null, dc = null, rtcLocation = null, statsTimer = null;
const MIC = { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 };
if (params.get("transport") === "webrtc") $("transport").value = "webrtc";

function line(cls, text) {
  const el = document.createElement("div");
  el.className = cls;
  el.textContent = text;
  $("log").appendChild(el);
  return el;
}

function setStatus(text) { $("status").textContent = text; }

async function start() {
  $("start").disabled = $("transport").disabled = true;
  setStatus("starting");
  if ($("transport").value === "webrtc") return startWebRTC();
  ctx = new AudioContext({ sampleRate: RATE });
  micStream = await navigator.mediaDevices.getUserMedia({ audio: MIC });
  await ctx.audioWorklet.addModule("/static/mic-worklet.js");
  const mic = new AudioWorkletNode(ctx, "mic-frames");
  ctx.createMediaStreamSource(micStream).connect(mic);
  const url = new URL("/ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  for (const key of ["profile", "token"]) if (params.get(key)) url.searchParams.set(key, params.get(key));
  ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  ws.onmessage = (m) => (typeof m.data === "string" ? onEvent(JSON.parse(m.data)) : onAudio(m.data));
  ws.onclose = (e) => { setStatus(`closed (${e.code}${e.reason ? ": " + e.reason : ""})`); stop(); };
  mic.port.onmessage = (m) => { if (ws && ws.readyState === WebSocket.OPEN) ws.send(m.data); };
  setInterval(sendPlayback, 100);
}

function authHeaders() { return params.get("token") ? { Authorization: `Bearer ${params.get("token")}` } : {}; }

// The STUN/TURN servers the gateway tells browsers to use (a browser behind a NAT may need its TURN relay).
// A gateway without the endpoint (older) means none; a refused token stops here with the gateway's reason.
async function iceServers() {
  const r = await fetch(new URL("/webrtc/ice-servers", location.href), { headers: authHeaders(), cache: "no-store" });
  if (r.status === 401 || r.status === 403) throw new Error(`${r.status}: ${(await r.text()).trim()}`);
  const servers = r.ok ? (await r.json()).iceServers : [];
  vx.iceServerUrls = servers.map((s) => s.urls);
  return servers;
}

async function startWebRTC() {
  const servers = await iceServers();
  micStream = await navigator.mediaDevices.getUserMedia({ audio: MIC });
  pc = new RTCPeerConnection({ iceServers: servers });
  micStream.getAudioTracks().forEach((t) => pc.addTrack(t, micStream));
  dc = pc.createDataChannel("events");
  dc.onmessage = (m) => onEvent(JSON.parse(m.data));
  pc.ontrack = (e) => {
    const el = $("agent-audio");
    el.srcObject = e.streams[0] || new MediaStream([e.track]);
    el.play().catch(() => {});
  };
  pc.onconnectionstatechange = () => {
    if (pc && ["failed", "closed"].includes(pc.connectionState)) { setStatus(`closed (${pc.connectionState})`); stop(); }
  };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {  // one round trip: send the offer with every candidate in it
    if (pc.iceGatheringState === "complete") return resolve();
    pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === "complete") resolve(); };
    setTimeout(resolve, 3000);
  });
  const url = new URL("/webrtc", location.href);
  if (params.get("profile")) url.searchParams.set("profile", params.get("profile"));
  const r = await fetch(url, { method: "POST", body: pc.localDescription.sdp,
                               headers: { "Content-Type": "application/sdp", ...authHeaders() } });
  const body = await r.text();
  if (r.status !== 201) throw new Error(`${r.status}: ${body.trim()}`);
  rtcLocation = new URL(r.headers.get("Location"), location.href);
  await pc.setRemoteDescription({ type: "answer", sdp: body });
  statsTimer = setInterval(rtcStats, 500);
}

async function rtcStats() {
  if (!pc) return;
  (await pc.getStats()).forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "audio") {
      vx.rtc = { packetsReceived: s.packetsReceived, totalAudioEnergy: s.totalAudioEnergy || 0 };
    }
  });
}

function send(doc) {
  if (dc && dc.readyState === "open") dc.send(JSON.stringify(doc));
  else if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(doc));
}

function stop() {
  flush();
  if (micStream) micStream.getTracks().forEach((t) => t.stop());
  if (statsTimer) clearInterval(statsTimer);
  if (pc) { const p = pc; pc = dc = null; p.close(); }
  $("interrupt").disabled = $("hangup").disabled = true;
  $("start").disabled = $("transport").disabled = false;
}

function onAudio(buf) {
  const head = new DataView(buf, 0, 8);
  const turn = head.getUint32(0, true), offsetMs = head.getUint32(4, true);
  const pcm = new Int16Array(buf, 8);
  const audio = ctx.createBuffer(1, pcm.length, RATE);
  const ch = audio.getChannelData(0);
  for (let i = 0; i < pcm.length; i++) ch[i] = pcm[i] / 32768;
  const src = ctx.createBufferSource();
  src.buffer = audio;
  src.connect(ctx.destination);
  const at = Math.max(nextAt, ctx.currentTime + 0.05);
  src.start(at);
  nextAt = at + audio.duration;
  playing.push({ src, turn, at, offsetMs, durMs: audio.duration * 1000 });
  vx.audioChunks++;
}

function flush() {
  for (const p of playing) { try { p.src.stop(); } catch (e) { /* not started */ } }
  playing = [];
  nextAt = 0;
}

let lastMark = "";
function sendPlayback() {
  if (!ctx || !playing.length) return;
  const now = ctx.currentTime;
  const started = playing.filter((p) => p.at <= now);
  if (!started.length) return;
  const cur = started[started.length - 1];
  const played = Math.round(cur.offsetMs + Math.min(cur.durMs, (now - cur.at) * 1000));
  playing = playing.filter((p) => p.at + p.durMs / 1000 > now || p === cur);
  const mark = `${cur.turn}:${played}`;
  if (mark !== lastMark && ws && ws.readyState === WebSocket.OPEN) {
    ws.send(JSON.stringify({ type: "playback", turn_id: cur.turn, played_ms: played }));
    lastMark = mark;
    vx.played[cur.turn] = played;
  }
}

function ms(x) { return x === null || x === undefined ? "–" : `${Math.round(x)} ms`; }

function onEvent(e) {
  if (e.type === "ready") {
    setStatus("connected");
    $("interrupt").disabled = $("hangup").disabled = false;
  } else if (e.type === "transcript") {
    if (!partialEl) partialEl = line("partial", "");
    partialEl.textContent = (e.final ? "You: " : "… ") + e.text;
    if (e.final) { partialEl.className = "user"; partialEl = null; vx.finals.push(e.text); }
  } else if (e.type === "agent_text") {
    const el = agentLine[e.turn_id] || (agentLine[e.turn_id] = line("agent", "Agent: "));
    el.textContent += e.text;
    vx.agentText[e.turn_id] = (vx.agentText[e.turn_id] || "") + e.text;
  } else if (e.type === "event") {
    vx.events.push({ kind: e.kind, turn: e.turn_id });
    $("state").textContent = e.state ? `(${e.state})` : "";
    if (e.kind === "interrupted") {
      flush();
      const el = agentLine[e.turn_id];
      if (el) el.innerHTML = `Agent: ${escape(e.heard_text)}<span class="cut">${escape(el.textContent.slice(7 + e.heard_text.length))}</span>`;
    }
  } else if (e.type === "latency") {
    vx.latencies.push(e);
    const row = document.createElement("tr");
    for (const v of [e.turn_id, ms(e.edge_voice_to_voice_ms), ms(e.voice_to_voice_ms), ms(e.stt_finalization_ms),
                     ms(e.llm_time_to_first_token_ms), ms(e.tts_time_to_first_audio_ms)]) {
      const td = document.createElement("td");
      td.textContent = v;
      row.appendChild(td);
    }
    $("latency").tBodies[0].appendChild(row);
  } else if (e.type === "notice") {
    line("note", `${e.stage || "agent"}: ${e.message}`);
  } else if (e.type === "closed") {  // WebRTC: the gateway says why before it closes the connection
    setStatus(`closed (${e.code}${e.reason ? ": " + e.reason : ""})`);
    stop();
  }
}

function escape(s) { const d = document.createElement("div"); d.textContent = s; return d.innerHTML; }

$("start").onclick = () => start().catch((err) => { setStatus(`error: ${err.message}`); $("start").disabled = false; });
$("interrupt").onclick = () => { flush(); send({ type: "interrupt" }); };
$("hangup").onclick = () => {
  send({ type: "end" });
  if (rtcLocation) fetch(rtcLocation, { method: "DELETE", headers: authHeaders() }).catch(() => {});
  if (pc) { setStatus("closed (hung up)"); stop(); }
};
