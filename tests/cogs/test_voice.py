"""``/voice``: status, preview, delete (with its buttons), export, share/unshare, assistant opt-in — through
the harness with real storage and the real engines. Voices are stored directly through the repository
(one real embedding per module) except where the test is the whole enrol → delete path."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from discord import app_commands
from sqlalchemy import func, or_, select

from bot.enrollment import PREVIEW_MAX_SECONDS, PREVIEW_TEXT
from bot.player import Utterance
from bot.replies import size_text
from cogs.voice import CANCEL_ID, CONFIRM_ID, EXPORT_FILENAME
from core.audio import AUDIO_TOKEN_SECONDS
from storage import ConsentRecord, ReferenceClip, StoredSize, VoiceProfile
from storage.schema import (
    assistant_opt_ins,
    consent_challenges,
    consent_records,
    embeddings,
    voice_profiles,
    voice_shares,
)
from tests.cogs.conftest import TEST_PHRASE, World, dump, wait_for
from tests.support.audio import espeak_wav, read_wav, to_voice_message
from tests.support.discord_harness import Recorded
from worker.local import LocalSpeechService
from worker.types import EmbeddingResult, SpeechRequest

pytestmark = [
    pytest.mark.asyncio(loop_scope="session"),
]

REFERENCE_TEXT = "Our neighbours planted a row of apple trees along the old stone fence last spring."


@dataclass(frozen=True)
class Cloned:
    """One real voice (embedded by the engines once per module) and its consent recording as uploaded."""

    result: EmbeddingResult
    recording: bytes  # OGG/Opus voice message


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def cloned(speech: LocalSpeechService, tmp_path_factory: pytest.TempPathFactory) -> Cloned:
    tmp = tmp_path_factory.mktemp("voice")
    wav = espeak_wav(tmp / "reference.wav", REFERENCE_TEXT, speed=140)
    pcm, rate = read_wav(wav)
    result = await speech.embed(pcm, rate)
    return Cloned(result, to_voice_message(wav, tmp / "consent.ogg").read_bytes())


async def store_voice(
    world: World, user_id: int, cloned: Cloned, *, guild_id: int | None = None, at: datetime | None = None
) -> VoiceProfile:
    """A voice saved as a passed enrolment would save it (no phrase, no transcription)."""
    return await world.bot.repos.profiles.save_enrollment(
        guild_id or world.fx.guild.id,
        user_id,
        language="en",
        embedding=cloned.result.embedding,
        clip=ReferenceClip("a" * 64, cloned.result.quality.speech_s, cloned.result.quality),
        consent=ConsentRecord(
            statement_version="test",
            phrase=TEST_PHRASE,
            transcript=TEST_PHRASE,
            match_score=0.0,
            speaker_similarity=None,
            recorded_at=at or datetime.now(UTC),
            clip_hash="b" * 64,
            recording=cloned.recording,
            recording_mime="audio/ogg",
        ),
        now=at,
    )


def queued(world: World, owner_id: int, cloned: Cloned) -> Utterance:
    """An utterance waiting in the server's queue (the player is not started)."""
    item = Utterance(
        SpeechRequest("hello", "en", cloned.result.embedding), owner_id, owner_id, world.fx.text_channel.id
    )
    world.bot.players.get(world.fx.guild).queue.append(item)
    return item


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Wait for an async condition (listeners and button callbacks run as their own tasks)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.02)


async def rows_about(world: World, user_id: int, profile_ids: list[int]) -> dict[str, int]:
    """Raw row counts, straight from the tables, of everything that could name the member."""
    gid = world.fx.guild.id
    queries = {
        "voice_profiles": select(func.count()).where(
            voice_profiles.c.guild_id == gid, voice_profiles.c.user_id == user_id
        ),
        "embeddings": select(func.count()).where(embeddings.c.profile_id.in_(profile_ids)),
        "consent_records": select(func.count()).where(consent_records.c.profile_id.in_(profile_ids)),
        "voice_shares": select(func.count()).where(
            or_(voice_shares.c.profile_id.in_(profile_ids), voice_shares.c.grantee_user_id == user_id)
        ),
        "consent_challenges": select(func.count()).where(
            consent_challenges.c.guild_id == gid, consent_challenges.c.user_id == user_id
        ),
        "assistant_opt_ins": select(func.count()).where(
            assistant_opt_ins.c.guild_id == gid, assistant_opt_ins.c.user_id == user_id
        ),
    }
    async with world.bot.database.read() as conn:
        return {name: int(await conn.scalar(q) or 0) for name, q in queries.items()}


def prompt(world: World) -> tuple[dict[str, Any], list[str]]:
    """The last message the bot sent (as stored by the harness) and the custom ids of its buttons."""
    message = list(world.harness.message_store.values())[-1]
    sent = [c for c in world.harness.responses() if _components(c)][-1]
    ids = [b["custom_id"] for row in _components(sent) for b in row["components"]]
    return message, ids


def _components(call: Recorded) -> list[dict[str, Any]]:
    data = (call.payload or {}).get("data", call.payload) or {}
    return list(data.get("components") or [])


async def click(world: World, member: Any, custom_id: str, message: dict[str, Any]) -> str:
    """Press a button and wait until the bot answered with some text; returns that text."""
    before = len(world.harness.calls)
    await world.harness.click(world.fx, member, custom_id, message)
    await wait_for(lambda: any(c.text for c in world.harness.calls[before:]), timeout=10)
    return "\n".join(c.text for c in world.harness.calls[before:] if c.text)


async def test_status_before_and_after_enrolment(world: World, cloned: Cloned) -> None:
    h, fx, repos = world.harness, world.fx, world.bot.repos
    await h.slash(fx, world.ada, "voice status")
    before = h.responses()[-1]
    assert before.ephemeral and "You have no cloned voice in this server" in before.text
    assert "Consent records" not in before.text

    await store_voice(world, world.ada.id, cloned)
    await store_voice(world, world.bob.id, cloned)
    await repos.shares.grant(fx.guild.id, world.ada.id, world.bob.id)
    await repos.shares.grant(fx.guild.id, world.bob.id, world.ada.id)
    await repos.assistant.opt_in(fx.guild.id, world.ada.id)
    await repos.settings.update(fx.guild.id, updated_by=None, retention_days=30)
    await h.slash(fx, world.ada, "voice status")
    after = h.responses()[-1]
    fields = {f["name"]: f["value"] for f in after.embeds[0]["fields"]}
    assert after.ephemeral
    assert fields["Last used"] == "never" and fields["Enrolled"].startswith("<t:")
    assert fields["Model"] == f"`{cloned.result.embedding.model_id}`"
    assert fields["Speech used"] == f"{cloned.result.quality.speech_s:.1f} s"
    assert "dBFS" in fields["Quality"] and "SNR" in fields["Quality"]
    assert fields["Consent records"] == "1"
    arrays = cloned.result.embedding.gpt_cond_latent.nbytes + cloned.result.embedding.speaker_embedding.nbytes
    recording = len(cloned.recording)
    total, kept = size_text(recording + arrays), size_text(recording)
    assert fields["Stored"] == f"{total}: consent recording {kept}, voice {size_text(arrays)}"
    assert "30 days unused" in fields["Kept"]
    assert fields["You share your voice with"] == f"<@{world.bob.id}>"
    assert fields["Voices shared with you by"] == f"<@{world.bob.id}>"
    assert fields["The assistant may use your voice"] == "yes"


async def test_re_enrolling_keeps_one_consent_recording_in_status_and_server_totals(
    world: World, cloned: Cloned
) -> None:
    """Ten re-enrolments: /voice status and /consent show count the one recording that proves consent."""
    h, fx = world.harness, world.fx
    for _ in range(10):
        await store_voice(world, world.ada.id, cloned)
    await store_voice(world, world.bob.id, cloned)
    arrays = cloned.result.embedding.gpt_cond_latent.nbytes + cloned.result.embedding.speaker_embedding.nbytes
    recording = len(cloned.recording)

    await h.slash(fx, world.ada, "voice status")
    fields = {f["name"]: f["value"] for f in h.responses()[-1].embeds[0]["fields"]}
    assert fields["Consent records"] == "1"
    assert fields["Stored"].startswith(f"{size_text(recording + arrays)}: ")

    await h.slash(fx, world.admin, "consent show")
    fields = {f["name"]: f["value"] for f in h.responses()[-1].embeds[0]["fields"]}
    assert (
        fields["Stored voice data"]
        == f"2 voices, 2 consent recordings: {size_text(2 * (recording + arrays))}"
    )
    assert await world.bot.repos.profiles.stored_size(fx.guild.id) == StoredSize(
        2, 2, 2 * recording, 2 * arrays
    )


async def test_preview_is_a_wav_in_the_members_own_voice(
    world: World, cloned: Cloned, monkeypatch: pytest.MonkeyPatch
) -> None:
    h, fx = world.harness, world.fx
    speech = world.bot.speech
    requests: list[SpeechRequest] = []
    synthesized = bytearray()
    real = speech.synthesize

    async def spy(request: SpeechRequest) -> AsyncIterator[bytes]:  # the real engine, watched
        requests.append(request)
        async for chunk in real(request):
            synthesized.extend(chunk)
            yield chunk

    monkeypatch.setattr(speech, "synthesize", spy)
    await store_voice(world, world.ada.id, cloned)
    await h.slash(fx, world.ada, "voice preview")
    assert "Voice cloning is off in this server" in h.last_text()

    await world.bot.repos.settings.update(fx.guild.id, updated_by=None, cloning_enabled=True)
    await h.slash(fx, world.bob, "voice preview")
    assert "haven't enrolled a voice" in h.last_text()
    assert not requests

    await h.slash(fx, world.ada, "voice preview")
    answer = h.responses()[-1]
    assert answer.ephemeral and PREVIEW_TEXT in answer.text, dump(world)
    [request] = requests
    stored = cloned.result.embedding
    assert request.text == PREVIEW_TEXT and request.embedding.model_id == stored.model_id
    assert np.array_equal(request.embedding.gpt_cond_latent, stored.gpt_cond_latent)
    assert np.array_equal(request.embedding.speaker_embedding, stored.speaker_embedding)
    data = answer.files["voice-preview.wav"]
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 24_000)
        frames = w.readframes(w.getnframes())
    assert frames == bytes(synthesized)  # every synthesized sample, nothing else
    duration_s = len(frames) / 2 / 24_000
    sentences = len(speech.xtts.prepare(request).sentences)  # type: ignore[attr-defined]
    longest_s = sentences * speech.xtts.max_tokens * AUDIO_TOKEN_SECONDS  # type: ignore[attr-defined]
    assert 0.5 < duration_s <= longest_s + 0.1, (duration_s, longest_s)
    profile = await world.bot.repos.profiles.get(fx.guild.id, world.ada.id)
    assert profile is not None and profile.last_used_at is not None

    # A preview counts as speaking: the cooldown /speak keeps applies to the next one.
    await world.bot.repos.settings.update(fx.guild.id, updated_by=None, cooldown_s=3600)
    await h.slash(fx, world.ada, "voice preview")
    assert "Slow down a little" in h.last_text() and len(requests) == 1


class EndlessVoice:
    """A speech stream that never ends on its own (what random weights do), at ``chunk_delay_s`` a chunk."""

    CHUNK = b"\x10\x00" * 2_400  # 0.1 s at 24 kHz

    def __init__(self, chunk_delay_s: float = 0.0, stall_after: int | None = None) -> None:
        self.chunk_delay_s, self.stall_after = chunk_delay_s, stall_after
        self.chunks = self.closed = 0

    async def synthesize(self, request: SpeechRequest) -> AsyncIterator[bytes]:
        try:
            while True:
                if self.stall_after is not None and self.chunks >= self.stall_after:
                    await asyncio.Event().wait()  # a hung engine
                await asyncio.sleep(self.chunk_delay_s)
                self.chunks += 1
                yield self.CHUNK
        finally:
            self.closed += 1


async def _preview_answer(world: World, timeout: float = 20.0) -> Recorded:
    await asyncio.wait_for(world.harness.slash(world.fx, world.ada, "voice preview"), timeout)
    return world.harness.responses()[-1]


def _wav_seconds(data: bytes) -> float:
    with wave.open(io.BytesIO(data)) as w:
        return w.getnframes() / w.getframerate()


async def test_preview_is_capped_in_length_and_time(
    world: World, cloned: Cloned, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A voice that never stops gives 6 s of preview; a slow engine is cut at the time limit."""
    await world.enable_cloning(cooldown=0)
    await store_voice(world, world.ada.id, cloned)
    enrollment = world.bot.enrollment

    endless = EndlessVoice()
    monkeypatch.setattr(enrollment.speech, "synthesize", endless.synthesize)
    answer = await _preview_answer(world)
    assert _wav_seconds(answer.files["voice-preview.wav"]) == PREVIEW_MAX_SECONDS, dump(world)
    assert endless.closed == 1 and endless.chunks == PREVIEW_MAX_SECONDS * 10  # synthesis stopped there

    monkeypatch.setattr(enrollment, "preview_timeout_s", 1.0)
    slow = EndlessVoice(chunk_delay_s=0.05)  # 0.1 s of audio every 0.05 s: 2 s made in the second
    monkeypatch.setattr(enrollment.speech, "synthesize", slow.synthesize)
    started = asyncio.get_running_loop().time()
    answer = await _preview_answer(world)
    assert asyncio.get_running_loop().time() - started < 5.0
    assert 1.0 <= _wav_seconds(answer.files["voice-preview.wav"]) < PREVIEW_MAX_SECONDS  # what was made
    assert slow.closed == 1

    hung = EndlessVoice(stall_after=3)  # 0.3 s, then nothing
    monkeypatch.setattr(enrollment.speech, "synthesize", hung.synthesize)
    answer = await _preview_answer(world)
    assert "couldn't make a preview" in answer.text and "still stored" in answer.text
    assert not answer.files and hung.closed == 1


async def test_enrol_then_delete_leaves_no_row(world: World, cloned: Cloned) -> None:
    h, fx, repos, gid = world.harness, world.fx, world.bot.repos, world.fx.guild.id
    await world.enable_cloning(sharing=True)
    assert "Your voice is enrolled" in await world.enroll(world.ada), dump(world)
    ada = await repos.profiles.get(gid, world.ada.id)
    assert ada is not None
    await store_voice(world, world.bob.id, cloned)
    await h.slash(fx, world.ada, "voice share", users={"member": world.bob})
    await repos.shares.grant(gid, world.bob.id, world.ada.id)
    await repos.assistant.opt_in(gid, world.ada.id)
    await repos.challenges.issue(gid, world.ada.id, "an open phrase")
    ada_item, bob_item = queued(world, world.ada.id, cloned), queued(world, world.bob.id, cloned)
    assert sum((await rows_about(world, world.ada.id, [ada.id])).values()) > 0

    await h.slash(fx, world.ada, "voice delete")
    question = h.responses()[-1]
    assert question.ephemeral and "Delete your voice data" in question.text
    assert "1 consent record with the recording" in question.text and "assistant opt-in" in question.text
    message, ids = prompt(world)
    assert ids == [CONFIRM_ID, CANCEL_ID]
    answer = await click(world, world.ada, CONFIRM_ID, message)

    assert "Deleted your cloned voice" in answer and "2 voice shares" in answer, answer
    assert "stopped 1 message queued in your voice" in answer
    left = await rows_about(world, world.ada.id, [ada.id])
    assert not any(left.values()), left
    export = await repos.profiles.export_member(gid, world.ada.id)
    assert export.profile is None and export.embedding is None and not export.consent_records
    assert not (export.shares_granted or export.shares_received or export.challenges)
    assert await repos.profiles.consent_recording(gid, world.ada.id) is None
    # The other member keeps their voice; only the share naming Ada went.
    assert await repos.profiles.get_voice(gid, world.bob.id) is not None
    assert await repos.shares.granted(gid, world.bob.id) == []
    player = world.bot.players.existing(gid)
    assert player is not None and list(player.queue) == [bob_item]
    assert ada_item.finished.is_set() and ada_item.error == "voice deleted"
    entry = (await repos.audit.recent(gid, 1))[0]
    assert entry.action == "voice.deleted" and entry.details["reason"] == "member_request"


async def test_admin_purge_takes_the_same_path_as_a_member_deleting(world: World, cloned: Cloned) -> None:
    """``/consent purge`` deletes, stops the voice and audits the admin, as ``/voice delete`` does."""
    h, fx, repos, gid = world.harness, world.fx, world.bot.repos, world.fx.guild.id
    ada = await store_voice(world, world.ada.id, cloned)
    ada_item, bob_item = queued(world, world.ada.id, cloned), queued(world, world.bob.id, cloned)

    await h.slash(fx, world.admin, "consent purge", users={"member": world.ada})
    answer = h.responses()[-1]
    assert answer.ephemeral and "voice removed, 1 consent record(s), 0 share(s)" in answer.text, answer.text
    assert not any((await rows_about(world, world.ada.id, [ada.id])).values())
    player = world.bot.players.existing(gid)
    assert player is not None and list(player.queue) == [bob_item]
    assert ada_item.finished.is_set() and ada_item.error == "voice deleted"
    entry = (await repos.audit.recent(gid, 1))[0]
    assert entry.action == "voice.deleted" and entry.details["reason"] == "admin"
    assert entry.actor_id == world.admin.id

    await h.slash(fx, world.admin, "consent purge", users={"member": world.ada})
    assert "has no voice data in this server" in h.responses()[-1].text


async def test_cancel_keeps_the_voice_and_others_cannot_press(world: World, cloned: Cloned) -> None:
    h, fx, gid = world.harness, world.fx, world.fx.guild.id
    await store_voice(world, world.ada.id, cloned)
    await h.slash(fx, world.ada, "voice delete")
    message, _ = prompt(world)

    refused = await click(world, world.bob, CONFIRM_ID, message)
    assert "These buttons belong to the member who ran `/voice delete`" in refused
    assert h.responses()[-1].ephemeral
    assert await world.bot.repos.profiles.get(gid, world.ada.id) is not None

    assert "Cancelled: nothing was deleted." in await click(world, world.ada, CANCEL_ID, message)
    assert await world.bot.repos.profiles.get(gid, world.ada.id) is not None
    # The prompt is finished: a late press of Delete does nothing at all.
    before = len(h.calls)
    await h.click(fx, world.ada, CONFIRM_ID, message)
    await asyncio.sleep(0.2)  # let a dispatched callback run, if one was found
    assert len(h.calls) == before
    assert await world.bot.repos.profiles.get(gid, world.ada.id) is not None


async def test_delete_prompt_times_out_and_nothing_stored(world: World, cloned: Cloned) -> None:
    h, fx, gid = world.harness, world.fx, world.fx.guild.id
    await h.slash(fx, world.bob, "voice delete")
    assert h.last_text() == "Nothing is stored about you in this server."

    await store_voice(world, world.ada.id, cloned)
    cog = world.bot.get_cog("Voice")  # loaded as an extension: its own module object, so no isinstance
    assert cog is not None
    cog.confirm_timeout_s = 0.2  # type: ignore[attr-defined]
    await h.slash(fx, world.ada, "voice delete")
    assert "stay active for 0 s" in h.last_text()
    message, _ = prompt(world)
    await wait_for(lambda: "No answer in time" in h.last_text(), timeout=5)
    edit = h.responses()[-1]
    assert edit.method == "PATCH" and edit.path.endswith("/messages/@original")
    before = len(h.calls)
    await h.click(fx, world.ada, CONFIRM_ID, message)
    await asyncio.sleep(0.2)  # let a dispatched callback run, if one was found
    assert len(h.calls) == before
    assert await world.bot.repos.profiles.get(gid, world.ada.id) is not None


async def test_export_has_everything_and_the_recording(world: World, cloned: Cloned) -> None:
    h, fx, gid = world.harness, world.fx, world.fx.guild.id
    await store_voice(world, world.ada.id, cloned)
    await world.bot.repos.shares.grant(gid, world.ada.id, world.bob.id)
    await h.slash(fx, world.ada, "voice export")
    answer = h.responses()[-1]
    assert answer.ephemeral and "consent recording is attached" in answer.text, dump(world)
    assert set(answer.files) == {EXPORT_FILENAME, "consent-recording.ogg"}
    assert answer.files["consent-recording.ogg"] == cloned.recording
    data = json.loads(answer.files[EXPORT_FILENAME])
    assert data["user_id"] == world.ada.id and data["guild_id"] == gid
    assert data["profile"]["user_id"] == world.ada.id and data["profile"]["language"] == "en"
    assert data["embedding"]["model_id"] == cloned.result.embedding.model_id
    [record] = data["consent_records"]
    assert record["phrase"] == TEST_PHRASE and record["recording_mime"] == "audio/ogg"
    assert base64.b64decode(record["recording"]) == cloned.recording
    assert [s["grantee_user_id"] for s in data["shares_granted"]] == [world.bob.id]
    assert {e["action"] for e in data["audit_entries"]} == {"voice.enrolled", "voice.shared"}


async def test_share_and_unshare(world: World, cloned: Cloned) -> None:
    h, fx, gid, shares = world.harness, world.fx, world.fx.guild.id, world.bot.repos.shares
    await world.bot.repos.settings.update(gid, updated_by=None, cloning_enabled=True, allow_sharing=True)
    await store_voice(world, world.ada.id, cloned)
    await h.slash(fx, world.ada, "voice share", users={"member": world.bob})
    assert "can now speak with your voice" in h.last_text()
    assert await shares.is_shared(gid, world.ada.id, world.bob.id)
    await h.slash(fx, world.ada, "voice unshare", users={"member": world.bob})
    assert "can no longer use your voice" in h.last_text()
    assert not await shares.is_shared(gid, world.ada.id, world.bob.id)
    await h.slash(fx, world.ada, "voice unshare", users={"member": world.bob})
    assert "You weren't sharing your voice with" in h.last_text()
    actions = [e.action for e in await world.bot.repos.audit.recent(gid, 2)]
    assert actions == ["voice.unshared", "voice.shared"]


async def test_share_refusals(world: World, cloned: Cloned) -> None:
    h, fx, gid = world.harness, world.fx, world.fx.guild.id
    await store_voice(world, world.ada.id, cloned)
    await h.slash(fx, world.ada, "voice share", users={"member": world.bob})
    assert "Voice cloning is off in this server" in h.last_text()
    await world.bot.repos.settings.update(gid, updated_by=None, cloning_enabled=True)
    await h.slash(fx, world.ada, "voice share", users={"member": world.bob})
    assert "doesn't allow sharing voices" in h.last_text() and "/consent set sharing:True" in h.last_text()

    await world.bot.repos.settings.update(gid, updated_by=None, allow_sharing=True)
    await h.slash(fx, world.ada, "voice share", users={"member": world.ada})
    assert "no need to share it with yourself" in h.last_text()
    await h.slash(fx, world.ada, "voice share", users={"member": fx.guild.me})
    assert "not with bots" in h.last_text()
    await h.slash(fx, world.bob, "voice share", users={"member": world.ada})
    assert "haven't enrolled a voice in this server yet" in h.last_text()
    assert await world.bot.repos.shares.granted(gid, world.ada.id) == []
    assert "Traceback" not in h.all_text()


async def test_assistant_opt_in_and_out(world: World, cloned: Cloned) -> None:
    h, fx, gid, assistant = world.harness, world.fx, world.fx.guild.id, world.bot.repos.assistant
    await h.slash(fx, world.ada, "voice assistant-optin")
    assert "haven't enrolled a voice" in h.last_text()
    assert not await assistant.is_opted_in(gid, world.ada.id)
    await store_voice(world, world.ada.id, cloned)
    await h.slash(fx, world.ada, "voice assistant-optin")
    assert "The assistant may now speak in your voice" in h.last_text()
    assert await assistant.is_opted_in(gid, world.ada.id)
    await h.slash(fx, world.ada, "voice assistant-optout")
    assert "no longer use your voice" in h.last_text()
    assert not await assistant.is_opted_in(gid, world.ada.id)
    await h.slash(fx, world.ada, "voice assistant-optout")
    assert "nothing changed" in h.last_text()


async def test_commands_are_described(world: World) -> None:
    """Slash descriptions fit Discord's 100 characters (registration would fail otherwise)."""
    group = world.bot.tree.get_command("voice")
    assert isinstance(group, app_commands.Group)
    names = {c.name for c in group.commands}
    assert names == {
        "status", "preview", "delete", "export", "share", "unshare", "assistant-optin", "assistant-optout",
    }  # fmt: skip
    assert all(0 < len(c.description) <= 100 for c in group.commands)
