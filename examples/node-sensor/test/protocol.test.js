// The protocol rules of the Node.js sensor, without a broker: node --test
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Memory, ProtocolError, decide, memberSource, parseCommand, statusJson, topicsFor } from '../protocol.js';

const BIG = '9007199254740993'; // 2^53 + 1: JSON.parse makes it ...992
const FILE = 'a3e4aed2-b091-41a6-8265-2185040e2c32';
const task = (taskId, attempt) =>
  Buffer.from(
    `{"v": 1, "kind": "task", "task_id": ${taskId}, "type": "update_firmware", "file_id": "${FILE}",` +
      ` "attempt": ${attempt}, "timeout_s": 3600, "added_later": {"task_id": 1}}`,
  );

test('task ids above 2^53 survive the round trip', () => {
  assert.notEqual(String(JSON.parse(task(BIG, 1)).task_id), BIG);
  const parsed = parseCommand(task(BIG, 1));
  assert.equal(parsed.taskId, BIG);
  const json = statusJson(parsed.taskId, 1, { status: 'completed', result: { version: '2.4.1' } });
  assert.equal(json, `{"v":1,"task_id":${BIG},"attempt":1,"status":"completed","result":{"version":"2.4.1"}}`);
});

test('memberSource reads top-level members only, the last duplicate winning', () => {
  assert.equal(memberSource('{"a": {"task_id": 1}, "task_id" : 22, "s": "\\"task_id\\": 3"}', 'task_id'), '22');
  assert.equal(memberSource('{"task_id": 1, "task_id": 2}', 'task_id'), '2');
  assert.equal(memberSource('{"task_id": "7"}', 'task_id'), undefined);
});

test('commands are validated strictly', () => {
  assert.deepEqual(parseCommand(Buffer.from('{"v":1,"kind":"cancel","task_id":7}')), { kind: 'cancel', taskId: '7' });
  for (const bad of [
    '[]',
    'not json',
    '{"kind":"cancel","task_id":7}',
    '{"v":2,"kind":"cancel","task_id":7}',
    '{"v":1,"kind":"cancel","task_id":"7"}',
    '{"v":1,"kind":"cancel","task_id":9223372036854775808}',
    '{"v":1,"kind":"cancel","task_id":07}',
    '{"v":1,"kind":"reboot","task_id":7}',
    task(7, 0).toString(),
    task(7, 1).toString().replace(FILE, '../../etc/passwd'),
  ]) {
    assert.throws(() => parseCommand(Buffer.from(bad)), ProtocolError, bad);
  }
  assert.throws(() => parseCommand(Buffer.alloc(16385, 32)), ProtocolError);
});

test('the idempotency table of section 5', () => {
  const finished = new Memory();
  const running = new Map();
  const t = (attempt) => ({ taskId: '7', attempt });
  assert.equal(decide(t(1), finished, running).action, 'start');
  running.set('7', { attempt: 2 });
  assert.equal(decide(t(2), finished, running).action, 'repeat-ongoing');
  assert.equal(decide(t(1), finished, running).action, 'ignore');
  assert.equal(decide(t(3), finished, running).action, 'replace');
  running.clear();
  finished.set('7', { attempt: 2, report: '{}' });
  assert.equal(decide(t(2), finished, running).action, 'repeat-final');
  assert.equal(decide(t(1), finished, running).action, 'ignore');
  assert.equal(decide(t(3), finished, running).action, 'start');
  finished.set('7', { cancelled: true });
  assert.equal(decide(t(9), finished, running).action, 'ignore');
});

test('memory is bounded, oldest first', () => {
  const memory = new Memory(2);
  memory.set('1', 1).set('2', 2).set('1', 1).set('3', 3);
  assert.deepEqual([...memory.keys()], ['1', '3']);
});

test('serials stay strings', () => {
  assert.equal(topicsFor(BIG).tasks, `sensors/${BIG}/tasks`);
  assert.throws(() => topicsFor('0012'), ProtocolError);
  assert.throws(() => topicsFor(12), ProtocolError);
});

test('error texts are bounded', () => {
  const json = JSON.parse(statusJson('7', 1, { status: 'error', error: 'x'.repeat(5000), retryable: false }));
  assert.equal(json.error.length, 1000);
  assert.equal(json.retryable, false);
});
