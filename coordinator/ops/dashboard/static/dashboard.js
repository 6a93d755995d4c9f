// The fleet dashboard. Plain DOM, no framework, no build step.
//
// Everything shown comes from Redis and is untrusted: it only ever reaches the page
// through textContent, dataset and numeric style values, never as markup.
(() => {
  'use strict';

  const RENDER_EVERY_MS = 250;        // at most four renders a second, however busy
  const HISTORY_MS = 5 * 60 * 1000;   // the charts' window
  const BUCKET_MS = 2000;             // and their resolution
  const STALE_AFTER_MS = 5000;        // no snapshot for this long: say so
  const RECONNECT_MAX_MS = 10000;
  const STATES = ['starting', 'ready', 'draining', 'failed', 'stopped'];
  // The instances' lines in the open-connections chart (and the swatch in their row).
  const PALETTE = ['#5aa9ff', '#3ecf8e', '#f0b429', '#b794f6', '#f25f5c', '#4fd1c5',
                   '#f687b3', '#a3bf5f'];

  const fleet = {
    instances: new Map(),   // id -> record, with receivedAt (client ms)
    totals: null,
    namespace: '',
    snapshotAt: 0,          // client ms of the last snapshot
    serverOffset: 0,        // server seconds minus client seconds
    redis: 'ok',
  };
  const rows = new Map();   // id -> row view
  const history = [];       // {t, held, admitted, open, openById}: one point per bucket
  const colors = new Map(); // id -> PALETTE index, while the id is in the charts' window
  let lastAdmitted = null;  // id -> admitted count at the previous snapshot
  let linkState = 'connecting';

  const $ = (id) => document.getElementById(id);

  function el(tag, className) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    return node;
  }

  function setText(node, text) {
    const value = String(text);
    if (node.textContent !== value) node.textContent = value;
  }

  function setData(node, name, value) {
    const text = String(value);
    if (node.dataset[name] !== text) node.dataset[name] = text;
  }

  // Bars fill by transform, which needs no layout (a width would re-lay the table).
  function setScale(node, percent) {
    const value = 'scaleX(' + (Math.min(100, Math.max(0, percent)) / 100).toFixed(3) + ')';
    if (node.style.transform !== value) node.style.transform = value;
  }

  function num(value) {
    const n = typeof value === 'number' ? value : parseFloat(value);
    return Number.isFinite(n) ? n : null;
  }

  function knownState(state) {
    return STATES.includes(state) ? state : 'unknown';
  }

  function duration(seconds) {
    if (seconds === null) return '–';
    const s = Math.max(0, seconds);
    // Whole seconds: a row's text then changes once a second, not at every render.
    if (s < 120) return Math.floor(s) + ' s';
    if (s < 7200) return Math.floor(s / 60) + ' min ' + Math.floor(s % 60) + ' s';
    return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
  }

  function count(value) {
    const n = num(value);
    return n === null ? '–' : String(Math.round(n));
  }

  // -- the data --------------------------------------------------------------------

  function onSnapshot(doc) {
    const now = Date.now();
    fleet.namespace = typeof doc.namespace === 'string' ? doc.namespace : '';
    fleet.totals = doc.totals || null;
    fleet.snapshotAt = now;
    fleet.redis = 'ok';
    const generated = num(doc.generated_at);
    if (generated !== null) fleet.serverOffset = generated - now / 1000;
    const next = new Map();
    for (const record of Array.isArray(doc.instances) ? doc.instances : []) {
      if (!record || typeof record.id !== 'string') continue;
      record.receivedAt = now;         // the page's own bookkeeping, whatever the
      delete record.phaseReceivedAt;  // record carried under these names
      next.set(record.id, record);
    }
    fleet.instances = next;
    sample(now);
  }

  function onEvent(message) {
    const record = message && fleet.instances.get(message.instance);
    if (!record) return;  // the snapshot that follows every event brings new instances
    const now = Date.now();
    if (message.event === 'stopped') {
      fleet.instances.delete(message.instance);
    } else {
      if (typeof message.state === 'string') record.state = message.state;
      if (message.event === 'phase_started' && message.phase !== record.phase) {
        record.time_in_phase = 0;
        record.phaseReceivedAt = now;
      }
      if (typeof message.phase === 'string') record.phase = message.phase;
      if (num(message.phase_index) !== null) record.phase_index = num(message.phase_index);
      if (num(message.phases_total) !== null) record.phases_total = num(message.phases_total);
    }
  }

  function onStatus(status) {
    fleet.redis = status && status.redis === 'down' ? 'down' : 'ok';
  }

  // Seconds elapsed on a field that the server measured at receipt time.
  function aged(record, field, since) {
    const base = num(record[field]);
    return base === null ? null : base + (Date.now() - since) / 1000;
  }

  function heartbeatAge(record) {
    return aged(record, 'heartbeat_age', record.receivedAt);
  }

  function timeInPhase(record) {
    return aged(record, 'time_in_phase', record.phaseReceivedAt || record.receivedAt);
  }

  // The fleet's estimate of when a starting instance will be ready, counting down.
  function readyIn(record) {
    const countdown = num(record.expected_ready_in);
    if (countdown !== null) return countdown - (Date.now() - record.receivedAt) / 1000;
    const at = num(record.expected_ready_at);
    return at === null ? null : at - (Date.now() / 1000 + fleet.serverOffset);
  }

  // Gone when its heartbeat is older than its TTL, even if no snapshot says so (the
  // server or Redis may be away).
  function pruneExpired() {
    for (const [id, record] of fleet.instances) {
      const age = heartbeatAge(record);
      const ttl = num(record.ttl);
      if (age !== null && ttl !== null && age > ttl) fleet.instances.delete(id);
    }
  }

  // One point per BUCKET_MS: the latest held count, and what was admitted in it.
  function sample(now) {
    const totals = fleet.totals || {};
    const admitted = new Map();
    let newly = 0;
    for (const [id, record] of fleet.instances) {
      const n = num(record.admitted) || 0;
      admitted.set(id, n);
      if (lastAdmitted && lastAdmitted.has(id)) newly += Math.max(0, n - lastAdmitted.get(id));
    }
    lastAdmitted = admitted;
    const t = Math.floor(now / BUCKET_MS) * BUCKET_MS;
    let point = history[history.length - 1];
    if (!point || point.t !== t) {
      point = { t, held: 0, admitted: 0 };
      history.push(point);
    }
    point.held = num(totals.held) || 0;
    point.admitted += newly;
    // Open connections: each instance's latest count in the bucket, and their sum.
    point.openById = new Map();
    point.open = 0;
    for (const [id, record] of fleet.instances) {
      const open = num(record.connections) || 0;
      point.openById.set(id, open);
      point.open += open;
    }
    while (history.length && history[0].t < now - HISTORY_MS) history.shift();
    assignColors();
  }

  // A colour per instance in the window, kept while it is there; a newcomer takes the
  // first one free (they repeat past eight instances).
  function assignColors() {
    const seen = new Set();
    for (const point of history) for (const id of point.openById.keys()) seen.add(id);
    for (const id of colors.keys()) if (!seen.has(id)) colors.delete(id);
    const used = new Set(colors.values());
    for (const id of Array.from(seen).sort()) {
      if (colors.has(id)) continue;
      let index = 0;
      while (used.has(index) && index < PALETTE.length) index += 1;
      if (index === PALETTE.length) index = colors.size % PALETTE.length;
      colors.set(id, index);
      used.add(index);
    }
  }

  function colorOf(id) {
    return colors.has(id) ? PALETTE[colors.get(id)] : '';
  }

  // -- the rows --------------------------------------------------------------------

  function makeRow(id) {
    const tr = el('tr');
    tr.dataset.instance = id;

    const idCell = el('td', 'col-id');
    const idText = el('div', 'id');
    idText.textContent = id;
    const meta = el('div', 'meta');
    idCell.append(idText, meta);

    const stateCell = el('td', 'col-state');
    const pill = el('span', 'pill');
    const redis = el('span', 'redis-down');
    stateCell.append(pill, redis);

    const phaseCell = el('td', 'col-phase');
    const bar = el('div', 'bar');
    const fill = el('div', 'fill');
    bar.append(fill);
    const phaseLine = el('div', 'phase-line');
    const phaseName = el('span', 'phase-name');
    const phaseStep = el('span', 'phase-step');
    const phaseTime = el('span', 'phase-time');
    phaseLine.append(phaseName, phaseStep, phaseTime);
    phaseCell.append(bar, phaseLine);

    const heldCell = el('td', 'col-held');
    const held = el('span', 'held');
    const heldMeter = el('span', 'meter');
    const heldFill = el('span', 'fill');
    heldMeter.append(heldFill);
    heldCell.append(held, heldMeter);

    const openCell = el('td', 'num col-open');
    const swatch = el('span', 'swatch');
    const open = el('span', 'open');
    openCell.append(swatch, open);
    const admitted = el('td', 'num admitted');
    const rejected = el('td', 'num rejected');
    const heartbeat = el('td', 'num heartbeat');

    tr.append(idCell, stateCell, phaseCell, heldCell, openCell, admitted, rejected, heartbeat);
    return { tr, meta, pill, redis, fill, phaseName, phaseStep, phaseTime, held, heldFill,
             swatch, open, admitted, rejected, heartbeat };
  }

  function renderRow(row, record) {
    const state = typeof record.state === 'string' ? record.state : 'unknown';
    const known = knownState(state);
    setData(row.tr, 'state', known);
    setText(row.pill, known === 'draining' || known === 'failed' ? state.toUpperCase() : state);
    setText(row.redis, record.redis === 'down' ? 'redis down' : '');

    const meta = [record.host, record.version && 'v' + record.version, record.pid && 'pid ' + record.pid]
      .filter((part) => typeof part === 'string' || typeof part === 'number');
    setText(row.meta, meta.join(' · '));

    const index = num(record.phase_index);
    const total = num(record.phases_total);
    // A ready or draining instance has completed its current phase, as far as the
    // record can tell; a starting or failed one is still in it.
    const done = index === null ? 0 : known === 'ready' || known === 'draining' ? index : index - 1;
    const pct = total ? Math.min(100, Math.max(0, (100 * done) / total)) : 0;
    setScale(row.fill, pct);
    setText(row.phaseName, typeof record.phase === 'string' ? record.phase : '–');
    setText(row.phaseStep, index !== null && total !== null ? index + '/' + total : '');
    let timing = duration(timeInPhase(record));
    if (state === 'starting') {
      const inSeconds = readyIn(record);
      if (inSeconds !== null) {
        timing += inSeconds > 0 ? ' · ready in ~' + duration(inSeconds) : ' · ready any moment';
      }
    }
    setText(row.phaseTime, timing);

    const depth = num(record.queue_depth) || 0;
    const cap = num(record.queue_max);
    setText(row.held, cap === null ? String(depth) : depth + ' / ' + cap);
    setData(row.held, 'holding', depth > 0 ? 'yes' : 'no');
    setScale(row.heldFill, cap ? (100 * depth) / cap : 0);

    setText(row.open, count(record.connections));
    const color = colorOf(record.id);  // from PALETTE, never from the record
    if (row.swatch.dataset.color !== color) {
      row.swatch.dataset.color = color;
      row.swatch.style.backgroundColor = color;
    }
    setText(row.admitted, count(record.admitted));
    setText(row.rejected, count(record.rejected));
    const age = heartbeatAge(record);
    const ttl = num(record.ttl);
    setText(row.heartbeat, age === null ? '–' : duration(age) + ' ago');
    setData(row.heartbeat, 'late', age !== null && ttl !== null && age > ttl / 2 ? 'yes' : 'no');
  }

  function renderRows() {
    const body = document.querySelector('#instances tbody');
    for (const [id, row] of rows) {
      if (!fleet.instances.has(id)) {
        row.tr.remove();
        rows.delete(id);
      }
    }
    const ids = Array.from(fleet.instances.keys()).sort();
    let orderChanged = body.children.length !== ids.length;
    ids.forEach((id, i) => {
      let row = rows.get(id);
      if (!row) {
        row = makeRow(id);
        rows.set(id, row);
        orderChanged = true;
      }
      renderRow(row, fleet.instances.get(id));
      if (!orderChanged && body.children[i] !== row.tr) orderChanged = true;
    });
    if (orderChanged) {
      const fragment = document.createDocumentFragment();
      for (const id of ids) fragment.append(rows.get(id).tr);
      body.append(fragment);
    }
    // Before the first snapshot nothing is known: say so, not "no live instances".
    setText($('empty'), fleet.snapshotAt ? 'No live instances in this namespace yet.'
      : 'Waiting for the first fleet snapshot…');
    $('empty').hidden = ids.length > 0;
  }

  // -- the totals and the charts ---------------------------------------------------

  // Counted here from the instances, not read from the snapshot's totals: events move
  // instances between states between snapshots. The fleet cap is the smallest any
  // instance enforces, as registry.fleet_totals computes it.
  function renderTotals() {
    const byState = Object.fromEntries(STATES.map((s) => [s, 0]));
    let held = 0, open = 0, admitted = 0, rejected = 0, localCap = 0, recordCap = null;
    for (const record of fleet.instances.values()) {
      const state = knownState(record.state);
      if (state in byState) byState[state] += 1;
      held += num(record.queue_depth) || 0;
      open += num(record.connections) || 0;
      admitted += num(record.admitted) || 0;
      rejected += num(record.rejected) || 0;
      localCap += num(record.queue_max) || 0;
      const cap = num(record.fleet_cap);
      if (cap !== null) recordCap = recordCap === null ? cap : Math.min(recordCap, cap);
    }
    setText($('namespace'), fleet.namespace);
    setText($('total-instances'), fleet.instances.size);
    for (const state of ['starting', 'ready', 'draining', 'failed']) {
      setText($('total-' + state), byState[state]);
    }
    const totals = fleet.totals || {};
    const fleetCap = num(totals.fleet_cap) !== null ? num(totals.fleet_cap) : recordCap;
    setText($('total-held'), held);
    let capText, fillPct;
    if (fleetCap !== null) {
      const leases = num(totals.leases);
      capText = ' / ' + fleetCap + ' fleet cap' + (leases !== null ? ' · ' + leases + ' leases' : '');
      fillPct = fleetCap ? (100 * held) / fleetCap : 100;
    } else {
      capText = ' of ' + localCap + ' local slots · no fleet cap';
      fillPct = localCap ? (100 * held) / localCap : 0;
    }
    setText($('total-cap'), capText);
    setScale($('total-held-fill'), fillPct);
    setText($('total-open'), open);
    setText($('total-admitted'), admitted);
    setText($('total-rejected'), rejected);
  }

  // The smallest of 1, 2, 2.5, 5 times a power of ten at or above value: round ticks.
  function niceCeiling(value) {
    const power = Math.pow(10, Math.floor(Math.log10(value)));
    return [1, 2, 2.5, 5, 10].map((m) => m * power).find((step) => step >= value);
  }

  // Canvas sizes, measured only when they change: reading them at every render would
  // force a layout in the middle of it.
  const chartSizes = new Map();
  const resized = new ResizeObserver((entries) => {
    for (const entry of entries) {
      const box = entry.contentRect;
      chartSizes.set(entry.target, { width: box.width, height: box.height });
    }
  });

  // series: [{values: [{t, v}], color, fill}], drawn in order (the last on top).
  function drawChart(canvas, series, now) {
    const ratio = window.devicePixelRatio || 1;
    const size = chartSizes.get(canvas);
    if (!size || !size.width || !size.height) return;
    const { width, height } = size;
    if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
    if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext('2d');
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const top = niceCeiling(Math.max(1, ...series.flatMap((s) => s.values.map((p) => p.v))));
    const pad = { left: 34, right: 6, top: 8, bottom: 16 };
    const plotW = width - pad.left - pad.right, plotH = height - pad.top - pad.bottom;
    const x = (t) => pad.left + plotW * (1 - (now - t) / HISTORY_MS);
    const y = (v) => pad.top + plotH * (1 - v / top);

    ctx.strokeStyle = 'rgba(255,255,255,0.08)';
    ctx.fillStyle = 'rgba(255,255,255,0.45)';
    ctx.font = '10px system-ui, sans-serif';
    ctx.lineWidth = 1;
    for (const v of [0, top / 2, top]) {
      ctx.beginPath();
      ctx.moveTo(pad.left, Math.round(y(v)) + 0.5);
      ctx.lineTo(width - pad.right, Math.round(y(v)) + 0.5);
      ctx.stroke();
      ctx.textAlign = 'right';
      ctx.textBaseline = 'middle';
      ctx.fillText(v % 1 ? v.toFixed(1) : String(v), pad.left - 4, y(v));
    }
    ctx.textAlign = 'left';
    ctx.textBaseline = 'alphabetic';
    ctx.fillText('−5 min', pad.left, height - 3);
    ctx.textAlign = 'right';
    ctx.fillText('now', width - pad.right, height - 3);

    for (const { values, color, fill } of series) {
      if (values.length < 2) continue;
      ctx.beginPath();
      values.forEach((p, i) => (i ? ctx.lineTo(x(p.t), y(p.v)) : ctx.moveTo(x(p.t), y(p.v))));
      ctx.strokeStyle = color;
      ctx.lineWidth = 1.5;
      ctx.stroke();
      if (!fill) continue;
      ctx.lineTo(x(values[values.length - 1].t), y(0));
      ctx.lineTo(x(values[0].t), y(0));
      ctx.closePath();
      ctx.globalAlpha = 0.18;
      ctx.fillStyle = color;
      ctx.fill();
      ctx.globalAlpha = 1;
    }
  }

  // One line per instance (its colour in its row), over the total's shaded area.
  function openSeries() {
    const canvas = $('chart-open');
    const series = [{ values: history.map((p) => ({ t: p.t, v: p.open })),
                      color: canvas.dataset.color, fill: true }];
    for (const id of Array.from(colors.keys()).sort()) {
      const values = [];
      for (const point of history) {
        if (point.openById.has(id)) values.push({ t: point.t, v: point.openById.get(id) });
      }
      series.push({ values, color: colorOf(id), fill: false });
    }
    return series;
  }

  function renderCharts() {
    const now = Date.now();
    const last = history[history.length - 1];
    const complete = history.slice(0, -1);  // the current bucket is still filling
    const rate = (p) => p.admitted / (BUCKET_MS / 1000);
    setText($('chart-held-now'), last ? last.held : '');
    setText($('chart-open-now'), last ? last.open : '');
    setText($('chart-admitted-now'),
            complete.length ? rate(complete[complete.length - 1]).toFixed(1) + '/s' : '');
    const single = (id, values) => [{ values, color: $(id).dataset.color, fill: true }];
    drawChart($('chart-held'), single('chart-held', history.map((p) => ({ t: p.t, v: p.held }))),
              now);
    drawChart($('chart-admitted'),
              single('chart-admitted', complete.map((p) => ({ t: p.t, v: rate(p) }))), now);
    drawChart($('chart-open'), openSeries(), now);
  }

  // -- the connection ----------------------------------------------------------------

  function renderLink() {
    const stale = fleet.snapshotAt && Date.now() - fleet.snapshotAt > STALE_AFTER_MS;
    let link = linkState, banner = '';
    if (fleet.redis === 'down') {
      link = 'degraded';
      banner = 'The dashboard cannot reach Redis: the view is not updating.';
    } else if (linkState === 'connecting') {
      banner = 'Connecting to the dashboard server…';
    } else if (linkState !== 'live') {
      banner = 'Reconnecting to the dashboard server…';
    } else if (stale) {
      link = 'degraded';
      banner = 'No fleet snapshot for ' + duration((Date.now() - fleet.snapshotAt) / 1000) + '.';
    }
    setData($('link'), 'link', link);
    setText($('link'), { live: 'live', connecting: 'connecting…', reconnecting: 'reconnecting…',
                         degraded: 'degraded' }[link]);
    setText($('banner'), banner);
    $('banner').hidden = !banner;
  }

  function render() {
    pruneExpired();
    renderRows();
    renderTotals();
    renderLink();
    renderCharts();
  }

  let retryMs = 1000;

  function connect() {
    const source = new EventSource('events');
    const parse = (handler) => (e) => {
      let body;
      try {
        body = JSON.parse(e.data);
      } catch (err) {
        return;
      }
      handler(body);
    };
    source.addEventListener('open', () => {
      linkState = 'live';
      retryMs = 1000;
    });
    source.addEventListener('snapshot', parse(onSnapshot));
    source.addEventListener('event', parse(onEvent));
    source.addEventListener('status', parse(onStatus));
    source.addEventListener('error', () => {
      linkState = 'reconnecting';
      if (source.readyState === EventSource.CLOSED) {
        // The browser gives up on an HTTP error (a proxy's 502, a draining server's
        // 503): start over ourselves, backing off.
        source.close();
        setTimeout(connect, retryMs);
        retryMs = Math.min(RECONNECT_MAX_MS, retryMs * 2);
      }
    });
  }

  resized.observe($('chart-held'));
  resized.observe($('chart-admitted'));
  resized.observe($('chart-open'));
  connect();
  setInterval(render, RENDER_EVERY_MS);
  render();
})();
