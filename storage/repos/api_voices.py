"""The worker API's voice library: consented voices by name, each stored with its consent record.

One transaction adds a voice and its consent record together, so there is never a voice without
the recording that allowed it; removing a voice deletes its consent record with it (``ON DELETE
CASCADE``). The worker reads a voice at every request, so a removal takes effect at once.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import RowMapping, delete, select
from sqlalchemy.exc import IntegrityError

from storage.db import Database
from storage.models import quality_to_json
from storage.repos._common import STORED_DTYPE, decode_array, encode_array, from_row
from storage.schema import api_voice_consents, api_voices
from storage.types import utcnow
from worker.types import ApiVoice, ApiVoiceConsent, ApiVoiceInfo, NewApiVoice, VoiceEmbedding

MAX_NAME_CHARS: Final = 64
MAX_CONSENT_RECORDING_BYTES: Final = 8 * 1024 * 1024  # a statement takes ~10 s to read; this is generous


class ApiVoiceRepo:
    """Add, find, list and remove the API's voices."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, voice: NewApiVoice) -> ApiVoiceInfo | None:
        """Store the voice and its consent record in one transaction; None if the name is taken.

        Raises ``ValueError`` for arrays that are not finite float32 or a consent recording that is
        empty, too large or without a MIME type.
        """
        _check(voice)
        gpt, gpt_shape, _ = encode_array("gpt_cond_latent", voice.embedding.gpt_cond_latent)
        spk, spk_shape, _ = encode_array("speaker_embedding", voice.embedding.speaker_embedding)
        now = utcnow()
        consent = voice.consent
        try:
            async with self._db.write() as conn:
                voice_id = (
                    await conn.execute(
                        api_voices.insert()
                        .values(
                            name=voice.name,
                            language=voice.language,
                            model_id=voice.embedding.model_id,
                            gpt_cond_latent=gpt,
                            gpt_cond_shape=gpt_shape,
                            speaker_embedding=spk,
                            speaker_shape=spk_shape,
                            reference_hash=voice.reference_hash,
                            speech_seconds=voice.speech_seconds,
                            quality=quality_to_json(voice.quality),
                            created_at=now,
                        )
                        .returning(api_voices.c.id)
                    )
                ).scalar_one()
                await conn.execute(
                    api_voice_consents.insert().values(
                        voice_id=voice_id,
                        speaker_name=consent.speaker_name,
                        statement_version=consent.statement_version,
                        statement=consent.statement,
                        transcript=consent.transcript,
                        word_error_rate=consent.word_error_rate,
                        speaker_similarity=consent.speaker_similarity,
                        added_by=consent.added_by,
                        recorded_at=consent.recorded_at,
                        clip_hash=consent.clip_hash,
                        recording=consent.recording,
                        recording_mime=consent.recording_mime,
                    )
                )
        except IntegrityError:
            return None  # the name's unique constraint: the transaction rolled back, nothing is stored
        return ApiVoiceInfo(
            name=voice.name,
            language=voice.language,
            model_id=voice.embedding.model_id,
            speech_seconds=voice.speech_seconds,
            created_at=now,
            added_by=consent.added_by,
            consent_recorded_at=consent.recorded_at,
        )

    async def get(self, name: str) -> ApiVoice | None:
        """The voice called ``name`` (exact match), or None."""
        async with self._db.read() as conn:
            row = (await conn.execute(select(api_voices).where(api_voices.c.name == name))).first()
        if row is None:
            return None
        m = row._mapping
        embedding = VoiceEmbedding(
            model_id=m["model_id"],
            gpt_cond_latent=decode_array(m["gpt_cond_latent"], m["gpt_cond_shape"], STORED_DTYPE),
            speaker_embedding=decode_array(m["speaker_embedding"], m["speaker_shape"], STORED_DTYPE),
        )
        return from_row(ApiVoice, row, embedding=embedding)

    async def list(self) -> list[ApiVoiceInfo]:
        """Every voice, by name."""
        query = (
            select(
                api_voices.c.name,
                api_voices.c.language,
                api_voices.c.model_id,
                api_voices.c.speech_seconds,
                api_voices.c.created_at,
                api_voice_consents.c.added_by,
                api_voice_consents.c.recorded_at,
            )
            .join(api_voice_consents, api_voice_consents.c.voice_id == api_voices.c.id)
            .order_by(api_voices.c.name)
        )
        async with self._db.read() as conn:
            return [_info(row._mapping) for row in await conn.execute(query)]

    async def consent(self, name: str) -> ApiVoiceConsent | None:
        """The consent record of the voice called ``name``, recording included; None if no such voice."""
        query = (
            select(api_voice_consents)
            .join(api_voices, api_voice_consents.c.voice_id == api_voices.c.id)
            .where(api_voices.c.name == name)
        )
        async with self._db.read() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        return from_row(ApiVoiceConsent, row, recording=bytes(row._mapping["recording"]))

    async def remove(self, name: str) -> bool:
        """Delete the voice and its consent record; False if there was no such voice."""
        async with self._db.write() as conn:
            result = await conn.execute(delete(api_voices).where(api_voices.c.name == name))
        return bool(result.rowcount)


class ApiVoiceLibrary:
    """An :class:`ApiVoiceRepo` over its own database: ``worker.voices.VoiceLibrary`` for the worker and CLI.

    ``open`` brings the database to the latest migration and opens it; ``async with`` does both ends.
    """

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._db: Database | None = None
        self._repo: ApiVoiceRepo | None = None

    @property
    def repo(self) -> ApiVoiceRepo:
        if self._repo is None:
            raise RuntimeError("ApiVoiceLibrary is not open: use `async with ApiVoiceLibrary(url)`")
        return self._repo

    async def open(self) -> None:
        from storage.migrate import upgrade

        if self._db is not None:
            return
        await upgrade(self._url)
        db = Database(self._url)
        await db.open()
        self._db, self._repo = db, ApiVoiceRepo(db)

    async def aclose(self) -> None:
        db, self._db, self._repo = self._db, None, None
        if db is not None:
            await db.close()

    async def __aenter__(self) -> ApiVoiceLibrary:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def list(self) -> list[ApiVoiceInfo]:
        return await self.repo.list()

    async def get(self, name: str) -> ApiVoice | None:
        return await self.repo.get(name)

    async def add(self, voice: NewApiVoice) -> ApiVoiceInfo | None:
        return await self.repo.add(voice)

    async def remove(self, name: str) -> bool:
        return await self.repo.remove(name)

    async def consent(self, name: str) -> ApiVoiceConsent | None:
        return await self.repo.consent(name)


def _check(voice: NewApiVoice) -> None:
    if not 0 < len(voice.name) <= MAX_NAME_CHARS:
        raise ValueError(f"name must be 1-{MAX_NAME_CHARS} characters, got {voice.name!r}")
    recording = voice.consent.recording
    if not recording:
        raise ValueError("the consent recording is empty")
    if len(recording) > MAX_CONSENT_RECORDING_BYTES:
        raise ValueError(
            f"the consent recording is {len(recording)} bytes; at most {MAX_CONSENT_RECORDING_BYTES} are kept"
        )
    if not voice.consent.recording_mime:
        raise ValueError("the consent recording needs a MIME type")


def _info(m: RowMapping) -> ApiVoiceInfo:
    return from_row(
        ApiVoiceInfo, m, speech_seconds=float(m["speech_seconds"]), consent_recorded_at=m["recorded_at"]
    )


__all__ = ["MAX_CONSENT_RECORDING_BYTES", "ApiVoiceLibrary", "ApiVoiceRepo"]
