"""The XTTS-v2 engine: load a checkpoint folder, clone a voice from PCM, stream speech in that voice.

A typed adapter over coqui-tts's ``Xtts``: :meth:`XttsEngine.generate` serves one request and
:meth:`XttsEngine.open_batch` many at once (:mod:`worker.batching`), with the same audio; every sample is
watermarked before it leaves. One thread (:mod:`worker.serving.scheduler`) drives it.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from core.audio import OUTPUT_SAMPLE_RATE
from core.engine_settings import EngineSettings
from core.i18n import tr
from worker.batching.graphs import FastDecode, resolve_fast_decode
from worker.batching.synthesis import (
    BatchSynthesis,
    ChunkWriter,
    DecoderPool,
    decode_pipeline,
)
from worker.errors import (
    IncompatibleVoice,
    InvalidAudio,
    InvalidRequest,
    UnsupportedLanguage,
)
from worker.tts.gpt import SamplingParams, UniformDraws, decode_step, new_sequence
from worker.tts.load import load_xtts
from worker.tts.speech import ChunkPlan, Int16Array, PreparedSpeech, StreamStats
from worker.tts.text import DEFAULT_CHAR_LIMIT, halve, split_sentences
from worker.tts.vocoder import FrameGrid, StreamingVocoder, vocoder_precision
from worker.types import MAX_EMBEDDING_ABS, FloatArray, SpeechRequest, VoiceEmbedding

if TYPE_CHECKING:
    from TTS.tts.models.xtts import Xtts

    from worker.analysis.watermark import Watermarker

log = logging.getLogger(__name__)

MIN_REFERENCE_SECONDS = 0.5  # s: XTTS needs 0.33 s per conditioning chunk; less is not a voice
MAX_TEXT_CHARS = 4000  # characters per request: two Discord messages' worth
MAX_BATCH_CUDA = 32  # streams per decode step on a GPU: a step at 32 costs about what one at 1 does
MAX_BATCH_CPU = 4  # on a CPU the vocoder's compute dominates: more rows only slow every stream down
_FRONTEND_PACKAGES = {"ja": "cutlet", "zh-cn": "pypinyin"}  # text front-ends coqui imports lazily


class XttsEngine:
    """One loaded XTTS-v2 checkpoint: clone voices (:meth:`embed`), speak (:meth:`stream`)."""

    def __init__(
        self,
        model: Xtts,
        model_id: str,
        device: str,
        *,
        watermark: Watermarker | None = None,
        chunks: ChunkPlan | None = None,
        sampling: SamplingParams | None = None,
        fast_decode: FastDecode | None = None,
        settings: EngineSettings | None = None,
    ) -> None:
        """``settings``: the engine's switches (``Settings.engine``; None: the defaults). ``fast_decode``
        replaces what they say about the decoder (the benchmark's variants)."""
        self.model = model
        self.model_id = model_id
        self.device = device
        self.watermark = watermark
        self.chunks = chunks or ChunkPlan()
        cfg = model.config
        self.sampling = sampling or SamplingParams(
            temperature=float(cfg.temperature),
            top_k=int(cfg.top_k),
            top_p=float(cfg.top_p),
            repetition_penalty=float(cfg.repetition_penalty),
        )
        self.languages: tuple[str, ...] = tuple(cfg.languages)
        self.max_tokens = int(model.gpt.max_gen_mel_tokens)  # audio tokens per sentence the model allows
        self.sample_rate = OUTPUT_SAMPLE_RATE
        self.settings = settings or EngineSettings()
        self.fast_decode = fast_decode or resolve_fast_decode(device, self.settings)
        # CUDA: each decode step launched before the last is read
        self.pipeline = decode_pipeline(device, self.settings.pipeline)
        # CUDA: batched HiFi-GAN calls in float16
        self.vocoder_precision = vocoder_precision(device, self.settings.vocoder_dtype)
        self.decoders = DecoderPool(self)

    @classmethod
    def load(
        cls,
        model_dir: Path,
        device: str = "cpu",
        *,
        watermark: Watermarker | None = None,
        chunks: ChunkPlan | None = None,
        sampling: SamplingParams | None = None,
        fast_decode: FastDecode | None = None,
        settings: EngineSettings | None = None,
    ) -> XttsEngine:
        """Load an XTTS-v2 folder (``config.json``, ``model.pth``, ``vocab.json``) onto ``device``."""
        model, model_id = load_xtts(Path(model_dir), device)
        return cls(
            model,
            model_id,
            device,
            watermark=watermark,
            chunks=chunks,
            sampling=sampling,
            fast_decode=fast_decode,
            settings=settings,
        )

    # ----- batching ----------------------------------------------------------------------------------

    @property
    def default_max_batch(self) -> int:
        """Streams decoded together by default: many on a GPU; few on a CPU, where HiFi-GAN dominates."""
        return MAX_BATCH_CUDA if torch.device(self.device).type == "cuda" else MAX_BATCH_CPU

    def open_batch(self, capacity: int) -> BatchSynthesis:
        """A continuous-batching session of up to ``capacity`` streams (:mod:`worker.batching.synthesis`)."""
        return self.decoders.open(capacity)

    # ----- cloning -----------------------------------------------------------------------------------

    def embed(self, pcm: FloatArray, sample_rate: int) -> VoiceEmbedding:
        """XTTS conditioning latents of the voice in ``pcm`` (mono float32, ideally only the best speech)."""
        audio = validate_pcm(pcm, sample_rate, min_seconds=MIN_REFERENCE_SECONDS)
        cfg = self.model.config
        max_samples = int(cfg.max_ref_len * sample_rate)
        wav = torch.from_numpy(np.ascontiguousarray(audio[:max_samples]))[None].to(self.device)
        with torch.inference_mode():
            cond = self.model.get_gpt_cond_latents(
                wav, sample_rate, length=int(cfg.gpt_cond_len), chunk_length=int(cfg.gpt_cond_chunk_len)
            )
            speaker = self.model.get_speaker_embedding(wav, sample_rate)
        return VoiceEmbedding(
            model_id=self.model_id,
            gpt_cond_latent=cond.float().cpu().numpy(),
            speaker_embedding=speaker.float().cpu().numpy(),
        )

    # ----- synthesis ---------------------------------------------------------------------------------

    def resolve_language(self, language: str) -> str:
        """The model's code for ``language`` ("en-US" → "en", "zh" → "zh-cn"), or UnsupportedLanguage."""
        code = language.strip().lower().replace("_", "-")
        candidates = [code, code.split("-")[0]]
        if candidates[1] == "zh":
            candidates.append("zh-cn")
        for candidate in candidates:
            if candidate in self.languages:
                return candidate
        raise UnsupportedLanguage(
            tr(
                "The voice model cannot speak {language}. Pick one of: {languages}.",
                language=repr(language),
                languages=", ".join(self.languages),
            ),
            supported=list(self.languages),
        )

    def prepare(self, request: SpeechRequest) -> PreparedSpeech:
        """Validate ``request`` and tokenise its sentences; raises the SpeechError a member can act on."""
        emb = request.embedding
        if emb.model_id != self.model_id:
            raise IncompatibleVoice(
                tr(
                    "This voice was enrolled with a different speech model: "
                    "re-enroll it with /enroll to use it again."
                ),
                voice_model_id=emb.model_id,
                model_id=self.model_id,
            )
        cond, speaker = self._voice_tensors(emb)
        language = self.resolve_language(request.language)
        max_tokens, min_tokens = self._token_limits(request)
        if len(request.text) > MAX_TEXT_CHARS:
            raise InvalidRequest(
                tr(
                    "The text is too long ({length} characters): keep it under {limit}.",
                    length=len(request.text),
                    limit=MAX_TEXT_CHARS,
                )
            )
        base = language.split("-")[0]
        limit = self.model.tokenizer.char_limits.get(base, DEFAULT_CHAR_LIMIT)
        pieces = split_sentences(request.text, max_chars=limit)
        if not pieces:
            raise InvalidRequest(tr("There is nothing to say: the text has no letters or digits."))
        sentences: list[torch.Tensor] = []
        for piece in pieces:
            sentences.extend(self._tokenize(piece, language))
        seed = request.seed if request.seed is not None else secrets.randbits(63)
        return PreparedSpeech(tuple(sentences), language, cond, speaker, min_tokens, max_tokens, seed)

    def stream(
        self, request: SpeechRequest, cancel: threading.Event, stats: StreamStats | None = None
    ) -> Generator[Int16Array, None, None]:
        """Synthesize ``request`` as 24 kHz mono int16 chunks; stops within one decode step of ``cancel``."""
        return self.generate(self.prepare(request), cancel, stats)

    def generate(
        self, speech: PreparedSpeech, cancel: threading.Event, stats: StreamStats | None = None
    ) -> Generator[Int16Array, None, None]:
        """Chunks of a prepared request, sized by :class:`ChunkPlan` (small first, then growing).

        ``min_tokens``/``max_tokens`` apply to each sentence. Output length for ``n`` tokens in a sentence
        is :meth:`output_samples` ``([n])``; with a fixed seed the audio is the same every time.
        """
        stats = stats if stats is not None else StreamStats()
        stats.started = time.perf_counter()
        speech = speech.to(self.device)
        out = ChunkWriter(self.watermark, stats)
        draws = UniformDraws(speech.seed)
        try:
            for index, text_tokens in enumerate(speech.sentences):
                first = self.chunks.first_tokens if index == 0 else self.chunks.tokens
                for pcm in self._sentence(speech, text_tokens, draws, cancel, stats, first):
                    if (chunk := out.write(pcm)).size:
                        yield chunk
                if stats.cancelled:
                    return
            if (chunk := out.flush()).size:
                yield chunk
        finally:
            stats.elapsed_s = time.perf_counter() - stats.started

    def _sentence(
        self,
        speech: PreparedSpeech,
        text_tokens: torch.Tensor,
        draws: UniformDraws,
        cancel: threading.Event,
        stats: StreamStats,
        first_chunk_tokens: int,
    ) -> Generator[FloatArray, None, None]:
        """Float audio of one sentence, a chunk every few decode steps as :class:`ChunkPlan` says."""
        stats.sentences += 1
        state = new_sequence(
            self.model.gpt,
            speech.gpt_cond_latent,
            text_tokens,
            min_tokens=speech.min_tokens,
            max_tokens=speech.max_tokens,
            draws=draws,
        )
        vocoder = StreamingVocoder(
            self.model.hifigan_decoder, speech.speaker_embedding, self.chunks.context_frames
        )
        target, since_chunk = first_chunk_tokens, 0
        while not state.finished:
            if cancel.is_set():
                stats.cancelled = True
                return
            vocoder.push(decode_step(self.model.gpt, state, self.sampling))
            stats.tokens += 1
            since_chunk += 1
            if not state.finished and since_chunk >= target and vocoder.pending_frames(final=False) > 0:
                yield self._take(vocoder, stats, final=False)
                target, since_chunk = self.chunks.after(target), 0
        yield self._take(vocoder, stats, final=True)

    def output_samples(self, tokens_per_sentence: list[int]) -> int:
        """Samples the stream yields for sentences of these many audio tokens each."""
        grid = FrameGrid(self.model.hifigan_decoder)
        return sum(grid.samples(n) for n in tokens_per_sentence)

    # ----- helpers -----------------------------------------------------------------------------------

    @staticmethod
    def _take(vocoder: StreamingVocoder, stats: StreamStats, *, final: bool) -> FloatArray:
        decoded = vocoder.decoded_frames
        pcm = vocoder.take(final=final).float().cpu().numpy()
        stats.vocoder_frames += vocoder.decoded_frames - decoded
        return pcm

    def _voice_tensors(self, emb: VoiceEmbedding) -> tuple[torch.Tensor, torch.Tensor]:
        dim = self.model.gpt.model_dim
        d_vector = self.model.args.d_vector_dim
        cond = np.asarray(emb.gpt_cond_latent, dtype=np.float32)
        speaker = np.asarray(emb.speaker_embedding, dtype=np.float32)
        positions = self._cond_positions
        shape_ok = cond.ndim == 3 and cond.shape[0] == 1 and cond.shape[2] == dim
        if not shape_ok or (positions and cond.shape[1] != positions) or speaker.shape != (1, d_vector, 1):
            raise IncompatibleVoice(
                tr("This voice's data does not fit the speech model: re-enroll it with /enroll."),
                gpt_cond_latent_shape=list(cond.shape),
                speaker_embedding_shape=list(speaker.shape),
            )
        if not all(np.all(np.abs(a) <= MAX_EMBEDDING_ABS) for a in (cond, speaker)):  # also False for NaN
            raise IncompatibleVoice(tr("This voice's data is damaged: re-enroll it with /enroll."))
        return torch.from_numpy(cond), torch.from_numpy(speaker)  # host tensors: see PreparedSpeech

    @property
    def _cond_positions(self) -> int | None:
        """Conditioning latents per voice (32 with XTTS-v2's perceiver); None when not fixed."""
        perceiver = getattr(self.model.gpt, "conditioning_perceiver", None)
        return int(perceiver.latents.shape[0]) if perceiver is not None else None

    def _token_limits(self, request: SpeechRequest) -> tuple[int, int]:
        max_tokens = self.max_tokens if request.max_new_tokens is None else request.max_new_tokens
        min_tokens = 0 if request.min_new_tokens is None else request.min_new_tokens
        if not 1 <= max_tokens <= self.max_tokens:
            raise InvalidRequest(f"max_new_tokens must be between 1 and {self.max_tokens}, got {max_tokens}.")
        if not 0 <= min_tokens <= max_tokens:
            raise InvalidRequest(f"min_new_tokens must be between 0 and max_new_tokens ({max_tokens}).")
        return max_tokens, min_tokens

    def _tokenize(self, piece: str, language: str) -> list[torch.Tensor]:
        """Token ids of ``piece``, halved at a word boundary until each part fits the GPT's text window."""
        try:
            ids = self.model.tokenizer.encode(piece.lower(), lang=language)
        except (ImportError, NotImplementedError) as exc:
            package = _FRONTEND_PACKAGES.get(language, "its text front-end")
            raise UnsupportedLanguage(
                tr(
                    "The speech worker cannot read {language} text: it needs {package} installed. "
                    "Try another language or ask the bot's operator.",
                    language=repr(language),
                    package=package,
                ),
                supported=[lang for lang in self.languages if lang not in _FRONTEND_PACKAGES],
            ) from exc
        if len(ids) < self.model.args.gpt_max_text_tokens:
            return [torch.tensor([ids], dtype=torch.int32)]
        left, right = halve(piece)
        if not left or not right:
            raise InvalidRequest(tr("A word in the text is too long to speak: split it up."))
        return self._tokenize(left, language) + self._tokenize(right, language)


def validate_pcm(pcm: Any, sample_rate: int, *, min_seconds: float = 0.0) -> FloatArray:
    """``pcm`` as a finite, non-empty 1-D float32 array, or InvalidAudio saying what is wrong."""
    if not isinstance(sample_rate, int) or not 8_000 <= sample_rate <= 192_000:
        raise InvalidAudio(
            f"The audio's sample rate {sample_rate!r} is not supported: send 16 to 48 kHz PCM."
        )
    audio = np.asarray(pcm)
    if audio.ndim == 2 and 1 in audio.shape:
        audio = audio.reshape(-1)
    if audio.ndim != 1 or not np.issubdtype(audio.dtype, np.floating):
        raise InvalidAudio("The audio must be mono floating-point PCM.")
    if audio.size == 0:
        raise InvalidAudio("The audio is empty: record a few seconds of speech.")
    audio = audio.astype(np.float32, copy=False)
    if not np.isfinite(audio).all():
        raise InvalidAudio("The audio contains invalid samples (NaN or infinity): record or upload it again.")
    if audio.size < min_seconds * sample_rate:
        raise InvalidAudio(f"The audio is too short: record at least {min_seconds:g} seconds of speech.")
    return audio
