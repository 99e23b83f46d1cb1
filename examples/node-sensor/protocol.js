// The sensortasks MQTT protocol v1, sensor side, as pure functions (docs/protocol.md).
// No I/O here, so that every rule can be tested without a broker: see test/protocol.test.js.

export const MAX_PAYLOAD_BYTES = 16384; // section 8
export const MAX_ERROR_CHARS = 1000;
export const ONLINE = '{"v":1,"online":true}'; // section 3: retained, after subscribing
export const OFFLINE = '{"v":1,"online":false}'; // the last will, and before every clean disconnect

const MAX_ID = 2n ** 63n - 1n;
const ID_DIGITS = /^[1-9][0-9]{0,18}$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const TASK_TYPES = new Set(['update_firmware', 'update_configuration']);

export class ProtocolError extends Error {}

/** A serial or task id as decimal text: 1 … 2^63−1, no sign, no leading zeros. */
export function isId(text) {
  return typeof text === 'string' && ID_DIGITS.test(text) && BigInt(text) <= MAX_ID;
}

/** The sensor's three topics. The serial stays a string: it may exceed 2^53 (section 9). */
export function topicsFor(serial, prefix = 'sensors') {
  if (!isId(serial)) throw new ProtocolError(`not a serial: ${JSON.stringify(serial)}`);
  const base = `${prefix}/${serial}`;
  return { tasks: `${base}/tasks`, status: `${base}/status`, presence: `${base}/presence` };
}

/**
 * The source text of a top-level member of a JSON object, e.g. the digits of "task_id".
 * JSON.parse turns 9007199254740993 into 9007199254740992; this reads the digits instead.
 * `text` must already be valid JSON (JSON.parse it first). Like JSON.parse, the last
 * occurrence of a duplicate key wins.
 */
export function memberSource(text, name) {
  let depth = 0;
  let found;
  for (let i = 0; i < text.length; i += 1) {
    const c = text[i];
    if (c === '"') {
      const start = i;
      for (i += 1; text[i] !== '"'; i += 1) if (text[i] === '\\') i += 1;
      if (depth !== 1) continue;
      let j = i + 1;
      while (/\s/.test(text[j])) j += 1;
      if (text[j] !== ':' || JSON.parse(text.slice(start, i + 1)) !== name) continue;
      j += 1;
      while (/\s/.test(text[j])) j += 1;
      const value = /^-?[0-9][0-9.eE+-]*/.exec(text.slice(j));
      found = value ? value[0] : undefined;
    } else if (c === '{' || c === '[') {
      depth += 1;
    } else if (c === '}' || c === ']') {
      depth -= 1;
    }
  }
  return found;
}

/**
 * Parse what arrives on sensors/{serial}/tasks (section 4.2) into
 * {kind: "task", taskId, type, fileId, attempt, timeoutS} or {kind: "cancel", taskId}.
 * taskId is a string of digits, exact. Throws ProtocolError on anything else.
 */
export function parseCommand(payload) {
  if (payload.length > MAX_PAYLOAD_BYTES) throw new ProtocolError(`payload of ${payload.length} bytes`);
  const text = payload.toString('utf8');
  let message;
  try {
    message = JSON.parse(text);
  } catch (error) {
    throw new ProtocolError(`not JSON: ${error.message}`);
  }
  if (message === null || typeof message !== 'object' || Array.isArray(message)) {
    throw new ProtocolError('not a JSON object');
  }
  if (message.v !== 1) throw new ProtocolError(`unsupported protocol version ${JSON.stringify(message.v)}`);
  const taskId = memberSource(text, 'task_id');
  if (!isId(taskId)) throw new ProtocolError(`bad task_id ${taskId}`);
  if (message.kind === 'cancel') return { kind: 'cancel', taskId };
  if (message.kind !== 'task') throw new ProtocolError(`unknown kind ${JSON.stringify(message.kind)}`);
  const { type, file_id: fileId, attempt, timeout_s: timeoutS } = message;
  if (!TASK_TYPES.has(type)) throw new ProtocolError(`unknown task type ${JSON.stringify(type)}`);
  if (typeof fileId !== 'string' || !UUID.test(fileId)) throw new ProtocolError('file_id is not a UUID');
  if (!Number.isInteger(attempt) || attempt < 1) throw new ProtocolError('bad attempt');
  if (!Number.isInteger(timeoutS) || timeoutS < 1) throw new ProtocolError('bad timeout_s');
  return { kind: 'task', taskId, type, fileId, attempt, timeoutS };
}

/**
 * A status report (section 4.3) as JSON text, with task_id written back as its exact digits.
 * `fields` holds status and progress, result, or error and retryable.
 */
export function statusJson(taskId, attempt, fields) {
  if (!isId(taskId)) throw new ProtocolError(`bad task_id ${taskId}`);
  const rest = { attempt, ...fields };
  if (typeof rest.error === 'string') rest.error = rest.error.slice(0, MAX_ERROR_CHARS);
  return `{"v":1,"task_id":${taskId},${JSON.stringify(rest).slice(1)}`;
}

/**
 * What to do with a task message (section 5), given what the sensor remembers:
 * `finished` maps task ids to {attempt, report} or {cancelled: true}; `running` maps
 * task ids to {attempt, progress}. Returns {action, why?}:
 * "start", "replace" (stop the running attempt, start this one), "repeat-final",
 * "repeat-ongoing", or "ignore".
 */
export function decide(task, finished, running) {
  const done = finished.get(task.taskId);
  if (done?.cancelled) return { action: 'ignore', why: 'cancelled' };
  if (done && task.attempt === done.attempt) return { action: 'repeat-final' };
  if (done && task.attempt < done.attempt) return { action: 'ignore', why: 'stale attempt' };
  const run = running.get(task.taskId);
  if (run && task.attempt === run.attempt) return { action: 'repeat-ongoing' };
  if (run && task.attempt < run.attempt) return { action: 'ignore', why: 'stale attempt' };
  return { action: run ? 'replace' : 'start' };
}

/** A Map that forgets its oldest entries beyond `limit` (finished tasks, for re-sends). */
export class Memory extends Map {
  constructor(limit = 1000) {
    super();
    this.limit = limit;
  }

  set(key, value) {
    this.delete(key);
    super.set(key, value);
    while (this.size > this.limit) this.delete(this.keys().next().value);
    return this;
  }
}
