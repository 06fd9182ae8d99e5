"""Continuous batching of XTTS-v2 synthesis: every running request advances one audio token per step.

:class:`BatchSynthesis` holds up to ``capacity`` requests that join and leave between steps, each getting the
audio it would get alone; :class:`ChunkWriter` serves both synthesis paths, and :class:`DecoderPool` keeps an
engine's decoders (static caches, captured graphs) between sessions.
"""

from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import functools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from core.audio import OUTPUT_SAMPLE_RATE
from core.engine_settings import AutoOnOff
from worker.errors import InternalWorkerError, SpeechError
from worker.tts.gpt import UniformDraws, draw_uniform, text_prefix, undraw_uniform
from worker.tts.vocoder import (
    VOCODER_MIN_SNR_DB,
    WINDOW_STEP_CUDA,
    StreamingVocoder,
    VocoderPrecision,
    VocoderWindow,
    decode_windows,
    precision_snr,
    prewarm,
    redo_in_float32,
)

if TYPE_CHECKING:
    from worker.analysis.watermark import Watermarker
    from worker.batching.decoder import BatchDecoder, PendingStep, StepResult
    from worker.batching.graphs import FastDecode
    from worker.tts.gpt import SamplingParams
    from worker.tts.speech import ChunkPlan, Int16Array, PreparedSpeech, StreamStats
    from worker.tts.vocoder import CapturedVocoder
    from worker.types import FloatArray

log = logging.getLogger(__name__)

MARK_THREADS_MAX = 8  # watermarking threads per engine: half the cores, at most this many
MAX_UNMADE_CHUNKS = 4  # a stream's chunks waiting for the watermark before its row sits out steps


class DecodingEngine(Protocol):
    """What a batch session and the decoder pool read of their engine (``serving.engine.XttsEngine``)."""

    model: Any  # coqui's Xtts: .gpt and .hifigan_decoder
    device: str
    watermark: Watermarker | None
    chunks: ChunkPlan
    sampling: SamplingParams
    decoders: DecoderPool
    fast_decode: FastDecode  # the pool turns graphs off here when capturing them fails
    pipeline: bool
    vocoder_precision: VocoderPrecision


@dataclass
class RowOutput:
    """What one step made for one request: chunks to send, and whether (or how) it ended."""

    key: Hashable
    chunks: list[Int16Array] = field(default_factory=list)
    done: bool = False
    error: SpeechError | None = None


@dataclass
class _Row:
    key: Hashable
    speech: PreparedSpeech
    stats: StreamStats
    writer: ChunkWriter
    draws: UniformDraws
    vocoder: StreamingVocoder
    unmade: deque[Future[Int16Array]] = field(default_factory=deque)  # its marking jobs not known done
    sentence: int = 0
    target: int = 0  # tokens before the next chunk
    since_chunk: int = 0
    steps: int = 0  # tokens of the current sentence
    needs_prefill: bool = True
    removed: bool = False  # cancelled or failed: audio still in flight for it is dropped
    epoch: int = 0  # sentences ended so far: a step launched before the last end is not this row's


@dataclass
class _InFlight:
    """A decode step launched and not yet read, and the rows it advanced (with their epochs then)."""

    step: PendingStep
    rows: list[tuple[int, _Row, int]]  # (index in the step's outputs, row, row's epoch at launch)


@dataclass
class _Launch:
    """The chunks due at one step: vocoded (:meth:`ready`), then made into each stream's int16 chunks
    (:attr:`chunks`, off the engine thread when there is a watermark), then handed out in order."""

    items: list[tuple[_Row, torch.Tensor]]  # each row's new audio (float32 on the host once ready)
    ends: list[_Row]  # rows whose last sentence ended at that step: done once this audio is out
    windows: list[VocoderWindow]  # what each item's audio was made from (to redo a reduced-precision one)
    event: torch.cuda.Event | None = None  # None: computed synchronously, ready at once
    chunks: list[tuple[_Row, Future[Int16Array], bool]] | None = None  # (row, chunk, ends the stream)

    def ready(self) -> bool:
        return self.event is None or bool(self.event.query())

    def wait(self) -> None:
        if self.event is not None:
            self.event.synchronize()

    def made(self) -> bool:
        return self.chunks is not None and all(chunk.done() for _, chunk, _ in self.chunks)


class BatchSynthesis:
    """Several synthesis requests decoded together on one engine; driven by one thread."""

    def __init__(
        self,
        engine: DecodingEngine,
        decoder: BatchDecoder,
        *,
        graphs: bool,
        batch_vocoder: bool,
        vocoder_net: torch.nn.Module | None = None,
        vocoder_graphs: CapturedVocoder | None = None,
        marking: ThreadPoolExecutor | None = None,
        pipeline: bool = False,
    ) -> None:
        self.engine = engine
        self.decoder = decoder
        self.graphs = graphs
        self.batch_vocoder = batch_vocoder
        self.vocoder_net = vocoder_net  # CUDA: a float16 HiFi-GAN (None: the model's own)
        self.vocoder_graphs = vocoder_graphs  # CUDA: that HiFi-GAN replayed at the standard shapes
        self.marking = marking  # threads that watermark chunks (None: made on this thread)
        self.pipeline = pipeline  # launch each decode step before reading the last (VOXCLONE_PIPELINE)
        self._pending: _InFlight | None = None  # pipelined: the step launched last, read next time
        self._slots: list[_Row] = []  # row i lives in decoder slot i
        self._draining: dict[Hashable, _Row] = {}  # decoding finished, audio still being vocoded
        self._launches: deque[_Launch] = deque()  # vocoder work in flight, oldest first

    @property
    def capacity(self) -> int:
        return self.decoder.capacity

    @property
    def free(self) -> int:
        return self.capacity - len(self._slots)

    @property
    def keys(self) -> list[Hashable]:
        """Every request the session still owes audio to (decoding, or its last chunks in flight)."""
        return [row.key for row in self._slots] + list(self._draining)

    def add(self, key: Hashable, speech: PreparedSpeech, stats: StreamStats) -> None:
        """Start ``speech`` in a free row; its first token comes with the next :meth:`step`."""
        stats.started = time.perf_counter()
        speech = speech.to(self.engine.device)
        row = _Row(
            key,
            speech,
            stats,
            ChunkWriter(self.engine.watermark, stats),
            UniformDraws(speech.seed),
            self._vocoder(speech),
            target=self.engine.chunks.first_tokens,
        )
        self.decoder.claim()
        self._slots.append(row)

    def remove(self, key: Hashable) -> None:
        """Drop ``key``'s row (cancelled or failed); the other rows are not disturbed."""
        for slot, row in enumerate(self._slots):
            if row.key == key:
                row.stats.elapsed_s = time.perf_counter() - row.stats.started
                row.removed = True
                self._release(slot)
                return
        draining = self._draining.pop(key, None)
        if draining is not None:
            draining.stats.elapsed_s = time.perf_counter() - draining.stats.started
            draining.removed = True

    def step(self, held: Collection[Hashable] = ()) -> list[RowOutput]:
        """Advance every row not in ``held`` (their listeners are behind) by one token; vocode due chunks.

        Returns the audio that is ready: on CUDA a chunk launched at one step usually comes out at the
        next. With no row to advance, it waits for the oldest chunks in flight instead.

        Pipelined (:attr:`pipeline`), the decode step launched here is read by the next call, after that
        call has launched its own: the host books one step's tokens, plans and launches its vocoder
        work and hands out audio while the device runs the next, instead of the device waiting for the
        host between steps. A row whose sentence ended at the step being read was advanced once more by
        the step launched meanwhile; that token is dropped and its random draw given back, so each
        stream's audio is what it would be unpipelined.
        """
        if not self._slots and not self._launches and self._pending is None:
            return []
        if self.marking is not None:  # a stream whose watermarking is behind waits for it too
            held = {*held, *(row.key for row in self._slots if _marking_behind(row))}
        joining = [i for i, row in enumerate(self._slots) if row.needs_prefill and row.key not in held]
        produced: list[tuple[_Row, torch.Tensor, int]] = []  # (row, latent, token)
        if joining:
            result = self._prefill(joining)
            produced += [(self._slots[s], result.latents[j], result.tokens[j]) for j, s in enumerate(joining)]
        # Unpipelined, rows that just joined take their next token at the next call, as they always did.
        launched = self._launch_step(held, () if self.pipeline else set(joining))
        earlier = len(self._launches)  # vocoder work launched before this call
        if self.pipeline:
            launched, self._pending = self._pending, launched
        if launched is not None:
            result = launched.step.result()
            produced += [
                (row, result.latents[i], result.tokens[i])
                for i, row, epoch in launched.rows
                if not row.removed and row.epoch == epoch
            ]
        # Pipelined, the device has the next step queued behind the vocoder work launched before this
        # call: waiting for that work's audio now idles nothing.
        return self._advance(produced, block=not produced, vocoded=earlier if self.pipeline else 0)

    def _launch_step(self, held: Collection[Hashable], skip: Collection[int]) -> _InFlight | None:
        """Launch a decode step for every row not held, joining or waiting for its prefill."""
        active = [
            not row.needs_prefill and row.key not in held and i not in skip
            for i, row in enumerate(self._slots)
        ]
        if not any(active):
            return None
        uniforms = [
            draw_uniform(row.draws, self.engine.sampling) if on else 0.0
            for row, on in zip(self._slots, active, strict=True)
        ]
        pending = self.decoder.launch(active, uniforms)
        advanced = enumerate(zip(self._slots, active, strict=True))
        return _InFlight(pending, [(i, row, row.epoch) for i, (row, on) in advanced if on])

    def close(self, *, reuse: bool = True) -> None:
        """End the session; its decoder goes back to the engine unless a failure may have broken it."""
        self._pending = None  # (on the decoder's stream: whatever runs there next runs after it)
        while self._launches:  # queued vocoder work must be done with this session's tensors
            self._launches.popleft().wait()
        self._draining.clear()
        while self._slots:
            self._release(len(self._slots) - 1)
        if reuse:
            self.engine.decoders.give_back(self.decoder, self.graphs)

    # ----- inside a step -----------------------------------------------------------------------------

    def _prefill(self, slots: list[int]) -> StepResult:
        gpt = self.engine.model.gpt
        prefixes, minimums, uniforms = [], [], []
        for slot in slots:
            row = self._slots[slot]
            with torch.inference_mode():
                prefixes.append(
                    text_prefix(gpt, row.speech.gpt_cond_latent, row.speech.sentences[row.sentence])
                )
            minimums.append(row.speech.min_tokens)
            uniforms.append(draw_uniform(row.draws, self.engine.sampling))
            row.needs_prefill = False
            row.stats.sentences += 1
        return self.decoder.prefill(slots, prefixes, minimums, uniforms)

    def _advance(
        self, produced: list[tuple[_Row, torch.Tensor, int]], *, block: bool, vocoded: int
    ) -> list[RowOutput]:
        """Book each row's new token; launch the vocoder on the chunks that are due; hand out ready audio
        (as :meth:`_hand_out` with ``block`` and ``vocoded``)."""
        stop = self.engine.model.gpt.stop_audio_token
        due: list[tuple[_Row, VocoderWindow]] = []
        finished: list[_Row] = []
        for row, latent, token in produced:
            row.vocoder.push(latent)
            row.stats.tokens += 1
            row.steps += 1
            row.since_chunk += 1
            if token == stop or row.steps >= row.speech.max_tokens:
                finished.append(row)
                self._sentence_ended(row)
                window = row.vocoder.window(final=True)
            elif row.since_chunk >= row.target and row.vocoder.pending_frames(final=False) > 0:
                window = row.vocoder.window(final=False)
                row.target, row.since_chunk = self.engine.chunks.after(row.target), 0
            else:
                continue
            if window is not None:
                row.vocoder.commit(window)
                row.stats.vocoder_frames += window.frames
                due.append((row, window))
        ends = [row for row in finished if not self._next_sentence(row)]
        for row in ends:  # its decoder row is free now; the stream ends once its last audio is out
            self._release(next(i for i, r in enumerate(self._slots) if r is row))
            self._draining[row.key] = row
        if due or ends:
            self._launches.append(self._launch(due, ends))
        outputs: dict[Hashable, RowOutput] = {}
        self._hand_out(outputs, block=block, vocoded=vocoded)
        for out in outputs.values():
            if out.done or out.error is not None:
                self.remove(out.key)
        return list(outputs.values())

    def _sentence_ended(self, row: _Row) -> None:
        """``row``'s sentence ended at the step being read. Pipelined, the step launched meanwhile advanced
        it once more: that token is dropped when it is read (the row's epoch moves on), and the random
        number it drew is given back, to be drawn again by the row's next sentence, as unpipelined."""
        flight = self._pending
        if flight is not None and any(r is row and epoch == row.epoch for _, r, epoch in flight.rows):
            undraw_uniform(row.draws, self.engine.sampling)
        row.epoch += 1

    def _launch(self, due: list[tuple[_Row, VocoderWindow]], ends: list[_Row]) -> _Launch:
        """HiFi-GAN over the due windows: at once, or queued behind the decode step (pipelined, CUDA).

        The audio comes back to the host in one copy for every stream's chunk. Unpipelined the host waits
        for it here; queued, an event says when it is there.
        """
        windows = [w for _, w in due]
        if not due:
            return _Launch([], ends, [])
        queued = torch.device(self.engine.device).type == "cuda" and self.pipeline
        with torch.inference_mode():
            waves = decode_windows(
                self.engine.model.hifigan_decoder,
                windows,
                batch=self.batch_vocoder,
                net=self.vocoder_net,
                graphs=self.vocoder_graphs,
            )
            new = [w.new_audio(wav) for w, wav in zip(windows, waves, strict=True)]
            flat = torch.cat(new).float()
            event = None
            if queued:
                host = torch.empty(flat.shape, dtype=torch.float32, pin_memory=True)
                host.copy_(flat, non_blocking=True)
                event = torch.cuda.Event()
                event.record()
            else:
                host = flat.cpu()
        pcm = host.split([int(a.shape[0]) for a in new])
        items = [(row, a) for (row, _), a in zip(due, pcm, strict=True)]
        return _Launch(items, ends, windows, event)

    def _hand_out(self, outputs: dict[Hashable, RowOutput], *, block: bool, vocoded: int = 0) -> None:
        """Chunks of finished launches, oldest first (chunks stay in order).

        Launches whose audio is on the host get their chunks made first (watermarked on the marking
        threads, each stream's in order), so that the engine thread goes on decoding meanwhile; for the
        ``vocoded`` oldest it waits until their audio is there. ``block``: wait for the oldest launch's
        chunks to be made too (when there is nothing else to do); never for a later one's marking.
        """
        for i, launch in enumerate(self._launches):
            if launch.chunks is None:
                if i < vocoded:
                    launch.wait()
                elif not launch.ready():
                    break  # in order: a later launch's chunks wait for an earlier one's
                self._make_chunks(launch)
        while self._launches:
            launch = self._launches[0]
            if not launch.made():
                if not block:
                    return
                launch.wait()
                if launch.chunks is None:
                    self._make_chunks(launch)
                assert launch.chunks is not None
                concurrent.futures.wait([chunk for _, chunk, _ in launch.chunks])
            block = False
            self._launches.popleft()
            assert launch.chunks is not None
            for row, chunk, last in launch.chunks:
                if row.removed:
                    continue
                out = outputs.setdefault(row.key, RowOutput(row.key))
                _guarded(out, chunk.result)
                if last:
                    out.done = True
                    row.stats.elapsed_s = time.perf_counter() - row.stats.started
                    self._draining.pop(row.key, None)

    def _make_chunks(self, launch: _Launch) -> None:
        """Start making ``launch``'s int16 chunks: each after its stream's previous one.

        Reduced-precision audio is checked here, on the host, where checking costs no wait for the GPU:
        a window with a non-finite sample is redone in float32 first.
        """
        chunks: list[tuple[_Row, Future[Int16Array], bool]] = []
        reduced = next(self.vocoder_net.parameters()).dtype if self.vocoder_net is not None else None
        for (row, pcm), window in zip(launch.items, launch.windows, strict=True):
            if row.removed:
                continue
            if reduced is not None and not bool(torch.isfinite(pcm).all()):
                pcm = redo_in_float32(self.engine.model.hifigan_decoder, window, reduced)
            chunks.append((row, self._chunk(row, functools.partial(row.writer.write, pcm.numpy())), False))
        for row in launch.ends:
            if not row.removed:
                chunks.append((row, self._chunk(row, row.writer.flush), True))
        launch.chunks = chunks

    def _chunk(self, row: _Row, make: Callable[[], Int16Array]) -> Future[Int16Array]:
        """``make()`` on the marking threads after the row's previous chunk (at once without them)."""
        if self.marking is None:
            done: Future[Int16Array] = Future()
            try:
                done.set_result(make())
            except Exception as exc:  # noqa: BLE001 (handed to _guarded by result(), as from a thread)
                done.set_exception(exc)
            return done
        previous = row.unmade[-1] if row.unmade else None  # (one no longer there is done)
        row.unmade.append(self.marking.submit(_after, previous, make))
        return row.unmade[-1]

    def _next_sentence(self, row: _Row) -> bool:
        """Start ``row``'s next sentence; False when that was its last."""
        if row.sentence + 1 >= len(row.speech.sentences):
            return False
        row.sentence += 1
        row.vocoder = self._vocoder(row.speech)
        row.target, row.since_chunk, row.steps = self.engine.chunks.tokens, 0, 0
        row.needs_prefill = True
        return True

    def _vocoder(self, speech: PreparedSpeech) -> StreamingVocoder:
        return StreamingVocoder(
            self.engine.model.hifigan_decoder,
            speech.speaker_embedding,
            self.engine.chunks.context_frames,
            window_step=WINDOW_STEP_CUDA if self.batch_vocoder else 1,
        )

    def _release(self, slot: int) -> None:
        moved = self.decoder.release(slot)
        last = self._slots.pop()
        if moved is not None:
            self._slots[slot] = last


class ChunkWriter:
    """Vocoder audio → one stream's int16 chunks, watermarked without seams, counted in ``stats``.

    Used by both synthesis paths (``XttsEngine.generate`` and :class:`BatchSynthesis`).
    """

    def __init__(self, watermarker: Watermarker | None, stats: StreamStats) -> None:
        from worker.analysis.watermark import MarkCarrier, StreamWatermarker

        self._marker = StreamWatermarker(watermarker, OUTPUT_SAMPLE_RATE) if watermarker is not None else None
        self._carrier = MarkCarrier(OUTPUT_SAMPLE_RATE) if watermarker is not None else None
        self._stats = stats

    def write(self, pcm: FloatArray) -> Int16Array:
        """The part of ``pcm`` ready to send (the watermark holds back a short tail for the next chunk)."""
        if self._marker is not None and self._carrier is not None:
            pcm = self._carrier.process(pcm)  # audio the mark can hold (see MarkCarrier)
            with torch.inference_mode():
                pcm = self._marker.push(pcm)
        return self._emit(pcm)

    def flush(self) -> Int16Array:
        """Whatever the watermark still holds, at the end of the stream."""
        if self._marker is None:
            return np.zeros(0, dtype=np.int16)
        with torch.inference_mode():
            return self._emit(self._marker.flush())

    def _emit(self, pcm: FloatArray) -> Int16Array:
        out = (np.clip(pcm, -1.0, 1.0) * 32767.0).astype(np.int16)
        if out.size:
            self._stats.chunks += 1
            self._stats.samples += out.size
            if self._stats.first_chunk_s is None:
                self._stats.first_chunk_s = time.perf_counter() - self._stats.started
        return out


def _marking_behind(row: _Row) -> bool:
    """Whether ``row`` has :data:`MAX_UNMADE_CHUNKS` chunks waiting for the watermark: if marking cannot
    keep up, decoding further ahead only queues more (and later streams' first chunks behind them)."""
    unmade = row.unmade
    while unmade and unmade[0].done():
        unmade.popleft()
    return len(unmade) >= MAX_UNMADE_CHUNKS


def _after(previous: Future[Int16Array] | None, make: Callable[[], Int16Array]) -> Int16Array:
    """``make()`` once ``previous`` (the same stream's earlier chunk) is done, failed or not.

    Deadlock-free on a FIFO pool: ``previous`` was submitted earlier, so it is done, running, or queued
    ahead of this job.
    """
    if previous is not None:
        concurrent.futures.wait([previous])
    return make()


def _guarded(out: RowOutput, make: Callable[[], Int16Array]) -> None:
    """Add ``make()``'s chunk to ``out``; a failure ends this stream only, never the batch."""
    if out.error is not None:
        return
    try:
        chunk = make()
    except SpeechError as exc:
        out.error = exc
        return
    except Exception:
        log.exception("speech synthesis failed for one stream")
        out.error = InternalWorkerError("Speech synthesis failed on the worker: try again.")
        return
    if chunk.size:
        out.chunks.append(chunk)


class DecoderPool:
    """An engine's batch decoders (static KV caches and captured graphs), kept between sessions.

    Building one allocates the cache and, with CUDA graphs, captures a graph per bucket (seconds), so a
    scheduler that restarts, or the benchmark's many schedulers, reuse them. One session uses a decoder
    at a time; a second concurrent session on the same engine gets a decoder of its own.
    """

    def __init__(self, engine: DecodingEngine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._free: dict[int, list[tuple[BatchDecoder, bool]]] = {}
        self._warm = threading.local()  # per thread: the streams it has cuDNN plans for
        self._net: torch.nn.Module | None = None  # HiFi-GAN in VOXCLONE_VOCODER_DTYPE, when not float32
        self._net_decided = False  # the reduced-precision copy is made and checked once per engine
        self._graphs: CapturedVocoder | None = None  # HiFi-GAN in CUDA graphs, for up to _graph_streams
        self._graph_streams = 0  # (-1: capturing failed; not tried again)
        self._marking_pool: ThreadPoolExecutor | None = None
        self.mark_threads = max(1, min(MARK_THREADS_MAX, (os.cpu_count() or 2) // 2))

    def open(self, capacity: int) -> BatchSynthesis:
        """A session of ``capacity`` rows on a free decoder (built on first use)."""
        with self._lock:
            spare = self._free.get(capacity)
            decoder, graphs = spare.pop() if spare else (None, False)
        if decoder is None:
            decoder, graphs = self._build(capacity)
        cuda = torch.device(self.engine.device).type == "cuda"
        net = self._vocoder_net()
        vocoder_graphs = None
        if cuda:
            fast = self.engine.fast_decode
            vocoder_graphs = (
                self._vocoder_graphs(capacity, net) if fast.graphs and fast.vocoder_graphs else None
            )
            if vocoder_graphs is None:  # eager calls at the standard shapes: cuDNN's plans ready
                self._prewarm(capacity, net)
        return BatchSynthesis(
            self.engine,
            decoder,
            graphs=graphs,
            batch_vocoder=cuda,
            vocoder_net=net,
            vocoder_graphs=vocoder_graphs,
            marking=self._marking(),
            pipeline=self.engine.pipeline,
        )

    def _marking(self) -> ThreadPoolExecutor | None:
        """The engine's watermarking threads (made once), when it watermarks.

        Marking a chunk is ~20 ms of CPU per second of audio (perth, on the 2-core dev CPU); made on the
        engine thread, 32 streams' chunks cost it ~37 ms per decode step there, against 0.2 ms for the
        rest of its work. On these threads it runs beside decoding, several streams at once.
        """
        if self.engine.watermark is None:
            return None
        with self._lock:
            if self._marking_pool is None:
                self._marking_pool = ThreadPoolExecutor(self.mark_threads, thread_name_prefix="watermark")
            return self._marking_pool

    def _vocoder_graphs(self, capacity: int, net: torch.nn.Module | None) -> CapturedVocoder | None:
        """HiFi-GAN (``net``, or the model's own) captured at the standard shapes for ``capacity`` streams:
        once per engine, again only for a session with more streams; None when capturing failed."""
        from worker.batching.graphs import capture_vocoder

        with self._lock:
            if self._graph_streams < 0 or (self._graphs is not None and self._graph_streams >= capacity):
                return self._graphs
            hifigan = net if net is not None else self.engine.model.hifigan_decoder.waveform_decoder
            self._graphs = capture_vocoder(hifigan, capacity)
            self._graph_streams = capacity if self._graphs is not None else -1
            return self._graphs

    @property
    def vocoder_dtype(self) -> torch.dtype:
        """The precision batched HiFi-GAN calls run in (float32 until a session has opened)."""
        return next(self._net.parameters()).dtype if self._net is not None else torch.float32

    def _vocoder_net(self) -> torch.nn.Module | None:
        """The HiFi-GAN copy batched calls use when ``engine.vocoder_precision`` is not float32 (made once).

        A checked precision (``auto``) that strays from float32 on these weights is not used: the worker
        logs the figure and keeps the model's own HiFi-GAN.
        """
        precision = self.engine.vocoder_precision
        if precision.dtype == torch.float32:
            return None
        with self._lock:
            if not self._net_decided:
                self._net_decided = True
                self._net = self._reduced_vocoder(precision)
            return self._net

    def _reduced_vocoder(self, precision: VocoderPrecision) -> torch.nn.Module | None:
        """A copy of HiFi-GAN in ``precision``, checked against float32 when asked; None keeps float32."""
        own = self.engine.model.hifigan_decoder.waveform_decoder
        try:
            net = copy.deepcopy(own).to(precision.dtype)
            snr = precision_snr(own, net)
        except RuntimeError:  # out of GPU memory, say: the model's own HiFi-GAN still serves
            log.warning(
                "making a %s HiFi-GAN failed: vocoder calls stay in float32", precision.name, exc_info=True
            )
            return None
        if precision.checked and not snr >= VOCODER_MIN_SNR_DB:
            log.warning(
                "%s HiFi-GAN strays from float32 on this model (SNR %.1f dB on a probe, below %.0f): "
                "batched vocoder calls stay in float32",
                precision.name, snr, VOCODER_MIN_SNR_DB,
            )  # fmt: skip
            return None
        log.info(
            "batched HiFi-GAN calls run in %s (SNR %.1f dB against float32 on a probe)", precision.name, snr
        )
        return net

    def _prewarm(self, capacity: int, net: torch.nn.Module | None = None) -> None:
        """cuDNN's plans for the vocoder's standard shapes, once per thread (its plan cache is per thread)."""
        if getattr(self._warm, "capacity", 0) >= capacity:  # a thread-local: thread ids get reused
            return
        started = time.perf_counter()
        try:
            shapes = prewarm(self.engine.model.hifigan_decoder, capacity, net=net)
        except RuntimeError:  # out of memory, say: serving still works, first uses of a shape are slower
            log.warning("warming the vocoder up failed: its first calls will be slower", exc_info=True)
            shapes = 0
        self._warm.capacity = capacity
        log.info("vocoder ready for %d shapes in %.1f s", shapes, time.perf_counter() - started)

    def give_back(self, decoder: BatchDecoder, graphs: bool) -> None:
        with self._lock:
            self._free.setdefault(decoder.capacity, []).append((decoder, graphs))

    def _build(self, capacity: int) -> tuple[BatchDecoder, bool]:
        from worker.batching.decoder import BatchDecoder

        engine = self.engine
        gpt = engine.model.gpt
        fast = engine.fast_decode
        decoder = BatchDecoder(
            gpt,
            engine.sampling,
            capacity=capacity,
            max_positions=max_positions(gpt),
            device=engine.device,
            dtype=fast.dtype,
            # The fused residual add + LayerNorm (Triton) saves kernels in a captured step. An eager step is
            # bound by host time per op, and a custom op's dispatch plus a Triton launch is not known to be
            # cheaper there than the two ops it replaces (not measured): graphs only.
            fused_norm=None if fast.graphs and fast.fused_norm != "off" else False,
            # the step's end (token choice...): likewise
            fused_sampling=None if fast.graphs and fast.fused_sampling != "off" else False,
            fused_attention=None if fast.graphs else False,  # and the attention: where it times faster
            timed_attention=None if fast.graphs else False,
            attention_mode=fast.fused_attention,
        )
        graphs = False
        if fast.graphs:
            from worker.batching.graphs import capture_prefills, capture_steps

            graphs = capture_steps(decoder)
            if not graphs:  # don't try again for every decoder this engine builds
                engine.fast_decode = dataclasses.replace(fast, graphs=False)
            elif fast.prefill_graphs and not capture_prefills(decoder):
                engine.fast_decode = dataclasses.replace(fast, prefill_graphs=False)
        log.info(
            "batch decoder for %d streams on %s (%s%s%s%s)",
            capacity,
            engine.device,
            fast.label if graphs else "eager",
            ", residual add + LayerNorm fused" if decoder.fused_norm else "",
            ", end of step fused" if decoder.fused_sampling else "",
            attention_label(decoder, graphs),
        )
        return decoder, graphs


def attention_label(decoder: BatchDecoder, graphs: bool) -> str:
    """Where a decoder's steps use the fused attention, for its log line ("" where nowhere)."""
    if not graphs:
        return ", attention fused" if decoder.fused_attention else ""
    fused = sum(1 for block in decoder.attention_at.values() if block)
    if not fused:
        return ""
    return f", attention fused in {fused} of {len(decoder.attention_at)} captured step shapes"


def max_positions(gpt: object) -> int:
    """Cache positions one sentence can need: conditioning, text with its markers, start token, audio."""
    perceiver = getattr(gpt, "conditioning_perceiver", None)
    cond = int(perceiver.latents.shape[0]) if perceiver is not None else int(gpt.max_prompt_tokens)  # type: ignore[attr-defined]
    needed = cond + int(gpt.max_text_tokens) + 1 + int(gpt.max_gen_mel_tokens)  # type: ignore[attr-defined]
    return -(-needed // 64) * 64  # a multiple of 64: attention kernels want aligned mask rows


def decode_pipeline(device: str, mode: AutoOnOff = "auto") -> bool:
    """Whether the engine loop launches each decode step before reading the last one's tokens.

    ``mode`` is ``VOXCLONE_PIPELINE`` (``EngineSettings.pipeline``). ``auto`` (the default) pipelines on
    CUDA, where the device can run a step while the host books the last one; on the CPU both are the
    same cores, and each sentence's end would cost one dropped step. ``on`` pipelines anywhere (the same
    audio; for tests), ``off`` nowhere.
    """
    return mode == "on" or (mode == "auto" and torch.device(device).type == "cuda")
