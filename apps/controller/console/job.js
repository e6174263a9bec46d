// A job's live page: GET /v1/videos/{id} once, then its Server-Sent Events (replayed from the
// start, so a late visit sees every block): progress, ETA and phase; a tile per block that shows
// the block's preview once it is stitched; the video when the job succeeds; cancel.
import { api, TERMINAL } from './api.js';
import { badge, duration, h } from './dom.js';

const SPEC_KEYS = ['prompt', 'negativePrompt', 'model', 'width', 'height', 'frames', 'fps', 'steps', 'guidance', 'sampler', 'shift', 'seed', 'block', 'context', 'stages', 'ulysses', 'cfgParallel'];

/** How a job's stages are laid out: `K=2`, or with stage groups `K=2 x U=2 x CFG` (docs/parallelism.md). */
const layoutText = (stages, group) => [`K=${stages}`, ...(group?.ulysses > 1 ? [`U=${group.ulysses}`] : []), ...(group?.cfgParallel ? ['CFG'] : [])].join(' x ');

export async function jobView(root, { signal, params: [id] }) {
  const job = await api('GET', `/v1/videos/${id}`);
  const status = h('span', { id: 'job-status' });
  const phase = h('p', { id: 'job-phase', class: 'phase' });
  // Two measures: block-steps denoised by the pipeline, and blocks decoded and stitched (which lags).
  const bar = h('progress', { id: 'job-progress', max: 1, value: 0 });
  const stitchedBar = h('progress', { id: 'job-stitched', max: 1, value: 0 });
  const counts = h('span', { id: 'job-counts' });
  const stage = h('span', { id: 'job-stage', class: 'stage' });
  const eta = h('span', { id: 'job-eta' });
  const tiles = h('div', { id: 'job-blocks', class: 'blocks' });
  const player = h('div', { id: 'job-video' });
  const message = h('p', { id: 'job-message', role: 'alert', hidden: true });
  const cancel = h('button', { id: 'job-cancel', type: 'button', class: 'danger', onclick: onCancel }, 'Cancel');

  root.append(
    h('h2', {}, 'Job ', h('span', { class: 'mono' }, id), ' ', status),
    h('dl', { class: 'spec' }, SPEC_KEYS.filter((k) => job.spec[k] !== null && job.spec[k] !== '').flatMap((k) => [h('dt', {}, k), h('dd', {}, String(job.spec[k]))])),
    h('div', { class: 'progress-row' }, h('label', { htmlFor: 'job-progress' }, 'denoised'), bar, h('label', { htmlFor: 'job-stitched' }, 'stitched'), stitchedBar),
    h('div', { class: 'progress-row' }, counts, stage, eta),
    phase,
    h('div', { class: 'actions' }, cancel),
    message,
    player,
    h('h3', {}, 'Blocks'),
    h('p', { class: 'hint' }, "Each block's tile shows the block's first frame once the block is decoded and stitched into the video."),
    tiles,
  );

  let blocksDone = 0;
  const stitched = new Set();
  const setStatus = (s) => {
    status.replaceChildren(badge(s));
    cancel.disabled = TERMINAL.includes(s);
  };
  const tile = (i) => tiles.querySelector(`[data-block="${i}"]`);
  // progress.blocksDone counts the blocks stitched so far; each one's `block` event brings its preview.
  const layoutTiles = (blocks) => {
    for (let i = tiles.children.length; i < blocks; i++) tiles.append(h('figure', { class: 'block waiting', 'data-block': i, 'data-state': 'waiting' }, h('div', { class: 'thumb' }), h('figcaption', {}, `block ${i}: waiting`)));
    for (let i = 0; i < blocks; i++) {
      const t = tile(i);
      const state = stitched.has(i) || i < blocksDone ? 'stitched' : 'waiting';
      if (t.dataset.state === state) continue;
      t.dataset.state = state;
      t.className = `block ${state}`;
      t.querySelector('figcaption').textContent = `block ${i}: ${state}`;
    }
  };
  const showProgress = (p) => {
    blocksDone = p.blocksDone;
    bar.max = p.blockSteps || 1;
    bar.value = p.blockStepsDone;
    stitchedBar.max = p.blocks || 1;
    stitchedBar.value = p.blocksDone;
    stage.textContent = !p.blockSteps ? 'not started' : p.blockStepsDone < p.blockSteps ? 'denoising' : p.blocksDone < p.blocks ? 'stitching the last blocks' : 'all blocks stitched';
    counts.textContent = `${p.blocksDone}/${p.blocks} blocks, ${p.blockStepsDone}/${p.blockSteps} block-steps`;
    eta.textContent = `ETA ${duration(p.etaSeconds)}`;
    layoutTiles(p.blocks);
  };
  const showVideo = () => {
    const video = h('video', { id: 'video', src: job.urls.content, controls: true, muted: true, autoplay: true, loop: true, playsInline: true });
    player.replaceChildren(h('h3', {}, 'Video'), video, h('p', {}, h('a', { href: job.urls.content, download: `${id}.mp4` }, 'Download MP4')));
  };
  const showMessage = (text) => {
    message.hidden = false;
    message.textContent = text;
  };

  async function onCancel() {
    cancel.disabled = true;
    try {
      finish(await api('POST', job.urls.cancel)); // the canceled record
    } catch (err) {
      showMessage(`Cancel refused: ${err.message}`);
      cancel.disabled = false;
    }
  }

  const showPreview = (index, url) => {
    stitched.add(index);
    layoutTiles(Math.max(tiles.children.length, index + 1));
    const thumb = tile(index).querySelector('.thumb');
    if (!thumb.firstChild) thumb.append(h('img', { src: url, alt: `first frame of block ${index}` }));
  };
  // A finished job, from its record: the final progress, then the video or the error. From then on
  // the page no longer moves: events still arriving (a replay racing a cancel) change nothing.
  let finished = false;
  const finish = (rec) => {
    if (finished) return;
    finished = true;
    events?.close();
    setStatus(rec.status);
    showProgress(rec.progress);
    if (rec.status === 'succeeded') {
      for (let i = 0; i < rec.progress.blocks; i++) showPreview(i, `${rec.urls.self}/blocks/${i}/preview.jpg`);
      const layout = rec.result.layout ? ` on ${layoutText(rec.result.layout.stages, rec.result.layout)}` : '';
      phase.textContent = `Done: ${rec.result.frames} frames at ${rec.result.fps} fps, rendered in ${duration(rec.result.seconds)}${layout}.`;
      showVideo();
    } else if (rec.status === 'failed') {
      phase.textContent = 'Failed.';
      showMessage(rec.error?.message ?? 'failed');
    } else {
      phase.textContent = 'Canceled.';
    }
  };

  let events = null;
  if (TERMINAL.includes(job.status)) {
    finish(job);
    return;
  }
  setStatus(job.status);
  showProgress(job.progress);
  phase.textContent = job.status === 'queued' ? 'Waiting in the queue.' : '';

  events = new EventSource(job.urls.events);
  signal.addEventListener('abort', () => events.close());
  const on = (name, fn) => events.addEventListener(name, (e) => finished || fn(JSON.parse(e.data)));
  on('queued', () => (phase.textContent = 'Waiting in the queue.'));
  on('started', (d) => {
    setStatus('running');
    phase.textContent = `Running, attempt ${d.attempt}: ${d.stages} stage${d.stages === 1 ? '' : 's'} (${layoutText(d.stages, d.layout)}) on ${d.workers.join(', ')}.`;
  });
  on('progress', showProgress);
  on('block', (d) => showPreview(d.index, d.previewUrl));
  on('failover', (d) => (phase.textContent = `Failover (${d.reason}): lost ${d.lost.join(', ')}; attempt ${d.attempt} resumes from the checkpoint.`));
  on('retrying', (d) => (phase.textContent = `Retrying after: ${d.error}`));
  // A terminal event ends the stream; the record has the final word (progress, result, error).
  for (const name of TERMINAL) {
    on(name, () => {
      events.close();
      api('GET', `/v1/videos/${id}`).then(finish, (err) => {
        setStatus(name);
        showMessage(`The job ${name}, but its record could not be read: ${err.message}`);
      });
    });
  }
  // The server's `event: error` (stream interrupted) and the connection's own errors: EventSource
  // reconnects by itself with Last-Event-ID, so no event is lost.
  events.addEventListener('error', () => {
    if (events.readyState !== EventSource.CLOSED) phase.dataset.reconnecting = 'true';
  });
  events.addEventListener('open', () => delete phase.dataset.reconnecting);
}
