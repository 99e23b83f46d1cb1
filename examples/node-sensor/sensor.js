#!/usr/bin/env node
// A sensortasks sensor in Node.js with MQTT.js, written from docs/protocol.md alone.
// Configuration comes from the environment (see README.md); logs are JSON lines on stdout.

import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import process from 'node:process';
import { setTimeout as sleep } from 'node:timers/promises';

import mqtt from 'mqtt';

import { Memory, OFFLINE, ONLINE, ProtocolError, decide, parseCommand, statusJson, topicsFor } from './protocol.js';

const env = process.env;
const serial = env.SENSOR_SERIAL ?? ''; // a string, never a parsed JSON number (section 9)
const topics = topicsFor(serial, env.SENSOR_TOPIC_PREFIX || 'sensors');
const config = {
  url: env.SENSOR_MQTT_URL || 'mqtts://localhost:8883',
  clientId: env.SENSOR_MQTT_CLIENT_ID || `sensor-${serial}`,
  username: env.SENSOR_MQTT_USERNAME || undefined,
  password: env.SENSOR_MQTT_PASSWORD || undefined,
  caFile: env.SENSOR_MQTT_CA_FILE || undefined,
  sessionExpiryS: Number(env.SENSOR_SESSION_EXPIRY_S || 3600),
  keepaliveS: Number(env.SENSOR_KEEPALIVE_S || 60),
  fileServer: env.SENSOR_FILE_SERVER_URL || undefined,
  fileToken: env.SENSOR_FILE_SERVER_TOKEN || undefined,
  workMs: Number(env.SENSOR_WORK_MS || 3000),
};
const PRESENCE_TIMEOUT_MS = 5000;
const PROGRESS_STEPS = [25, 50, 75];

function log(event, fields = {}) {
  process.stdout.write(`${JSON.stringify({ at: new Date().toISOString(), serial, event, ...fields })}\n`);
}

/** A failure to report as status "error"; retryable false ends the task at once (section 4.3). */
class TaskError extends Error {
  constructor(message, retryable) {
    super(message);
    this.retryable = retryable;
  }
}

// -- what the sensor remembers (section 5) -----------------------------------------------
/** Finished tasks: {attempt, report} or {cancelled: true}. A real device keeps this in flash. */
const finished = new Memory(1000);
/** Running attempts: {attempt, progress, abort}. */
const running = new Map();
let stopping = false;

// -- the connection (section 2) ------------------------------------------------------------
const client = mqtt.connect(config.url, {
  protocolVersion: 5,
  clientId: config.clientId,
  username: config.username,
  password: config.password,
  ca: config.caFile ? readFileSync(config.caFile) : undefined,
  clean: false,
  properties: { sessionExpiryInterval: config.sessionExpiryS },
  keepalive: config.keepaliveS,
  // MQTT.js retries at a fixed period: pick it at random so that a fleet does not reconnect in step.
  reconnectPeriod: 1000 + Math.floor(Math.random() * 2000),
  resubscribe: false, // we subscribe ourselves, before announcing presence
  will: { topic: topics.presence, payload: Buffer.from(OFFLINE), qos: 1, retain: true },
});

client.on('connect', async (connack) => {
  log('connected', { session_present: connack.sessionPresent });
  try {
    const [granted] = await client.subscribeAsync(topics.tasks, { qos: 1 });
    if (granted.qos >= 128) throw new Error(`subscription refused (reason code ${granted.qos})`);
    await client.publishAsync(topics.presence, ONLINE, { qos: 1, retain: true });
    log('online');
  } catch (error) {
    log('announce-failed', { error: error.message }); // the next reconnection tries again
  }
});
client.on('close', () => log('disconnected'));
client.on('error', (error) => {
  log('mqtt-error', { error: error.message, code: error.code });
  if (typeof error.code === 'number' && error.message.startsWith('Connection refused')) {
    // MQTT.js stops reconnecting after a refused CONNECT (wrong password or client id):
    // exit, and let the supervisor restart us with its own back off.
    process.exit(2);
  }
});
client.on('message', (topic, payload) => {
  if (topic !== topics.tasks) return;
  let command;
  try {
    command = parseCommand(payload);
  } catch (error) {
    if (!(error instanceof ProtocolError)) throw error;
    log('dropped', { reason: error.message });
    return;
  }
  if (command.kind === 'cancel') cancel(command.taskId);
  else receive(command);
});

async function publish(topic, payload, options) {
  try {
    await client.publishAsync(topic, payload, { qos: 1, ...options });
  } catch (error) {
    log('publish-failed', { topic, error: error.message }); // e.g. reason code 135: refused by the ACL
  }
}

/** Status reports are QoS 1 and never retained (section 4.3). */
function report(json) {
  return publish(topics.status, json, { retain: false });
}

// -- tasks (sections 4 and 5) ---------------------------------------------------------------
function receive(task) {
  const { action, why } = decide(task, finished, running);
  log('task', { task_id: task.taskId, attempt: task.attempt, type: task.type, action, why });
  if (action === 'ignore' || stopping) return;
  if (action === 'repeat-final') {
    report(finished.get(task.taskId).report); // the dispatcher missed our final status
    return;
  }
  const run = running.get(task.taskId);
  if (action === 'repeat-ongoing') {
    report(statusJson(task.taskId, run.attempt, { status: 'ongoing', progress: run.progress }));
    return;
  }
  if (action === 'replace') run.abort.abort();
  start(task);
}

function cancel(taskId) {
  const run = running.get(taskId);
  if (run) {
    run.abort.abort();
    running.delete(taskId);
  }
  finished.set(taskId, { cancelled: true }); // never start it again, whatever arrives later
  log('cancelled', { task_id: taskId, was_running: Boolean(run) });
}

function start(task) {
  const run = { attempt: task.attempt, progress: 0, abort: new AbortController() };
  running.set(task.taskId, run);
  execute(task, run).catch((error) => log('bug', { task_id: task.taskId, error: error.stack }));
}

async function execute(task, run) {
  const { signal } = run.abort;
  await report(statusJson(task.taskId, task.attempt, { status: 'ongoing', progress: 0 })); // the acknowledgement
  let final;
  try {
    const result = await work(task, signal, async (progress) => {
      if (signal.aborted) return;
      run.progress = progress;
      await report(statusJson(task.taskId, task.attempt, { status: 'ongoing', progress }));
    });
    final = statusJson(task.taskId, task.attempt, { status: 'completed', result });
  } catch (error) {
    if (signal.aborted) return; // cancelled or replaced by a newer attempt: say nothing more
    const retryable = error instanceof TaskError ? error.retryable : true;
    final = statusJson(task.taskId, task.attempt, { status: 'error', error: error.message, retryable });
  } finally {
    if (running.get(task.taskId) === run) running.delete(task.taskId);
  }
  if (signal.aborted) return;
  finished.set(task.taskId, { attempt: task.attempt, report: final });
  log('finished', { task_id: task.taskId, attempt: task.attempt, report: JSON.parse(final).status });
  await report(final);
}

/** The device's work: fetch and verify the file (section 7), then "apply" it. */
async function work(task, signal, progress) {
  const file = config.fileServer ? await fetchFile(task.fileId, signal) : undefined;
  for (const pct of PROGRESS_STEPS) {
    await sleep(config.workMs / (PROGRESS_STEPS.length + 1), undefined, { signal });
    await progress(pct);
  }
  await sleep(config.workMs / (PROGRESS_STEPS.length + 1), undefined, { signal });
  return { applied: task.type, file_id: task.fileId, ...(file && { bytes: file.length, sha256: sha256(file) }) };
}

function sha256(data) {
  return createHash('sha256').update(data).digest('base64');
}

/**
 * GET <file server>/files/{file_id} with the device's own token, and check the SHA-256 the
 * server announces in Repr-Digest (RFC 9530). Replace with your deployment's way: a signature
 * checked with a key built into the device is better for firmware.
 */
async function fetchFile(fileId, signal) {
  const url = new URL(`files/${fileId}`, config.fileServer.endsWith('/') ? config.fileServer : `${config.fileServer}/`);
  const headers = config.fileToken ? { authorization: `Bearer ${config.fileToken}` } : {};
  let response;
  try {
    response = await fetch(url, { headers, signal });
  } catch (error) {
    if (signal.aborted) throw error;
    throw new TaskError(`file service unreachable: ${error.cause?.message ?? error.message}`, true);
  }
  if (!response.ok) {
    const retryable = response.status >= 500 || response.status === 429;
    throw new TaskError(`file service answered ${response.status} for file ${fileId}`, retryable);
  }
  const body = Buffer.from(await response.arrayBuffer());
  const announced = /(?:^|,)\s*sha-256=:([A-Za-z0-9+/]+=*):/.exec(response.headers.get('repr-digest') ?? '');
  if (!announced) throw new TaskError(`file ${fileId} came without a sha-256 Repr-Digest`, false);
  if (announced[1] !== sha256(body)) throw new TaskError('checksum mismatch', false);
  return body;
}

// -- a clean stop (section 3) ----------------------------------------------------------------
async function stop(signalName) {
  if (stopping) return;
  stopping = true;
  log('stopping', { signal: signalName });
  for (const run of running.values()) run.abort.abort(); // the dispatcher re-sends it when we are back
  running.clear();
  if (client.connected) {
    // The last will does not fire on a clean DISCONNECT: say offline ourselves, and wait for the PUBACK.
    try {
      await Promise.race([
        client.publishAsync(topics.presence, OFFLINE, { qos: 1, retain: true }),
        sleep(PRESENCE_TIMEOUT_MS).then(() => {
          throw new Error(`no PUBACK in ${PRESENCE_TIMEOUT_MS} ms`);
        }),
      ]);
      log('offline');
    } catch (error) {
      log('offline-failed', { error: error.message });
    }
  }
  await client.endAsync();
  log('stopped');
  process.exit(0);
}

process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
log('starting', { url: config.url, client_id: config.clientId });
