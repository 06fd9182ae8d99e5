"""Drive the real bot through discord.py's own dispatch, with Discord's HTTP API recorded instead of sent.

Slash and context-menu interactions are built from raw payloads into real ``discord.Interaction``
objects and dispatched with ``bot.tree._call`` (discord.py's own option parsing, checks and error
handler). REST calls (``bot.http.request``) and interaction responses/follow-ups (the webhook adapter)
are recorded. Voice uses :class:`HarnessVoiceClient`, which runs discord.py's real ``AudioPlayer`` thread
and encodes every frame with the real libopus encoder.

This is the one module that touches discord.py's private API (RECIPES.md, "Discord without Discord").
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

import discord
import discord.opus
from discord.http import Route
from discord.player import AudioPlayer
from discord.webhook.async_ import AsyncWebhookAdapter, async_context

APPLICATION_ID = 900000000000000001
BOT_USER_ID = 900000000000000001
_ids = itertools.count(1)

# Permission bits (https://discord.com/developers/docs/topics/permissions)
ADMINISTRATOR = 1 << 3
MANAGE_GUILD = 1 << 5
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
ATTACH_FILES = 1 << 15
READ_HISTORY = 1 << 16
CONNECT = 1 << 20
SPEAK = 1 << 21
USE_APP_COMMANDS = 1 << 31
MEMBER_DEFAULT = (
    VIEW_CHANNEL | SEND_MESSAGES | ATTACH_FILES | READ_HISTORY | CONNECT | SPEAK | USE_APP_COMMANDS
)


VOICE_STATE: dict[str, Any] = {  # a member's voice flags, as in a VOICE_STATE_UPDATE payload
    "session_id": "x",
    "deaf": False,
    "mute": False,
    "self_deaf": False,
    "self_mute": False,
    "self_video": False,
    "suppress": False,
    "request_to_speak_timestamp": None,
}


def snowflake() -> int:
    """A unique id whose embedded time is now (interaction tokens expire 15 minutes after their id's time)."""
    return discord.utils.time_snowflake(datetime.now(UTC)) + next(_ids) % (1 << 22)


@dataclass
class Recorded:
    """One call the bot made to Discord."""

    kind: str  # "http" or "webhook"
    method: str
    path: str
    payload: dict[str, Any] | None
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def content(self) -> str:
        data = (self.payload or {}).get("data", self.payload) or {}
        return str(data.get("content") or "")

    @property
    def embeds(self) -> list[dict[str, Any]]:
        data = (self.payload or {}).get("data", self.payload) or {}
        return list(data.get("embeds") or [])

    @property
    def text(self) -> str:
        """Content plus embed titles, descriptions and fields: what a member reads."""
        parts = [self.content]
        for embed in self.embeds:
            parts += [embed.get("title") or "", embed.get("description") or ""]
            for f in embed.get("fields") or []:
                parts += [f.get("name") or "", f.get("value") or ""]
        return "\n".join(p for p in parts if p)

    @property
    def ephemeral(self) -> bool:
        data = (self.payload or {}).get("data", self.payload) or {}
        return bool(int(data.get("flags") or 0) & 64)


def _read_file(f: discord.File) -> bytes:
    fp = f.fp
    pos = fp.tell()
    fp.seek(0)
    data = fp.read()
    fp.seek(pos)
    return bytes(data)


class _RecordingWebhookAdapter(AsyncWebhookAdapter):
    def __init__(self, harness: Harness) -> None:
        super().__init__()
        self.harness = harness

    async def request(
        self,
        route: Route,
        session: Any,
        *,
        payload: dict[str, Any] | None = None,
        multipart: list[dict[str, Any]] | None = None,
        files: Any = None,
        **_: Any,
    ) -> Any:
        if multipart:
            for part in multipart:
                if part.get("name") == "payload_json":
                    payload = json.loads(part["value"])
        rec = Recorded(
            "webhook",
            route.method,
            _path(route),
            payload,
            {f.filename: _read_file(f) for f in files or []},
        )
        self.harness._record(rec)
        if route.method in ("POST", "PATCH") and "/webhooks/" in rec.path and "/callback" not in rec.path:
            body = (payload or {}).get("data", payload) or {}
            return self.harness.message_payload(self.harness.last_channel_id, body, author_id=BOT_USER_ID)
        if rec.path.endswith("/callback"):
            data = (payload or {}).get("data") or {}
            interaction_id = rec.path.split("/")[2]
            response: dict[str, Any] = {
                "interaction": {
                    "id": interaction_id,
                    "type": 2,
                    "response_message_loading": (payload or {}).get("type") == 5,
                    "response_message_ephemeral": bool(int(data.get("flags") or 0) & 64),
                }
            }
            if (payload or {}).get("type") in (4, 7):
                response["resource"] = {
                    "type": payload["type"] if payload else 4,
                    "message": self.harness.message_payload(
                        self.harness.last_channel_id, data, author_id=BOT_USER_ID
                    ),
                }
            return response
        return None


def _path(route: Route) -> str:
    """The request path with its parameters filled in, as Discord would receive it."""
    return route.url.removeprefix(Route.BASE)


class _Speak:
    async def speak(self, *_: Any, **__: Any) -> None:
        return None


class HarnessVoiceClient(discord.VoiceProtocol):
    """A voice connection that plays through discord.py's real AudioPlayer and libopus encoder.

    Packets are kept in ``packets`` (Opus bytes, one per 20 ms frame) instead of being sent by UDP, and the
    PCM frames they were encoded from (48 kHz stereo s16le) in ``pcm_frames``.
    """

    instances: ClassVar[list[HarnessVoiceClient]] = []
    # Seconds the player thread waits before calling ``after``, on top of its own lateness: a test knob
    # for callbacks that land while the bot has moved on (a slow socket sending the trailing silence).
    after_delay_s: ClassVar[float] = 0.0
    players: ClassVar[list[AudioPlayer]] = []  # every player thread started, joined by Harness.close()

    def __init__(self, client: discord.Client, channel: discord.abc.Connectable) -> None:
        super().__init__(client, channel)
        self.channel: Any = channel
        self.guild = channel.guild  # type: ignore[attr-defined]
        # discord.py's AudioPlayer schedules `ws.speak()` on `client.loop`, which only a real login sets.
        client.loop = asyncio.get_running_loop()
        self.loop = client.loop
        self.ws = _Speak()
        self.timeout = 5.0
        self.encoder = discord.opus.Encoder()
        self.packets: list[bytes] = []
        self.pcm_frames: list[bytes] = []
        self._connected = threading.Event()
        self._player: AudioPlayer | None = None
        self.disconnects = 0
        HarnessVoiceClient.instances.append(self)

    async def connect(
        self, *, timeout: float, reconnect: bool, self_deaf: bool = False, self_mute: bool = False
    ) -> None:
        self._connected.set()

    async def disconnect(self, *, force: bool = False) -> None:
        self.stop()
        self._connected.clear()
        self.disconnects += 1
        self.cleanup()

    async def on_voice_state_update(self, data: Any) -> None:
        return None

    async def on_voice_server_update(self, data: Any) -> None:
        return None

    async def move_to(self, channel: Any, **_: Any) -> None:
        self.channel = channel

    def is_connected(self) -> bool:
        return self._connected.is_set()

    def wait_until_connected(self, timeout: float | None = None) -> bool:
        return self._connected.wait(timeout)

    def send_audio_packet(self, data: bytes, *, encode: bool = True) -> None:
        if encode:
            self.pcm_frames.append(data)
        self.packets.append(self.encoder.encode(data, 960) if encode else data)

    def play(self, source: discord.AudioSource, *, after: Any = None, **_: Any) -> None:
        if self._player is not None and self._player.is_playing():
            raise discord.ClientException("Already playing audio.")
        if after is not None and self.after_delay_s > 0:
            after = _delayed(after, self.after_delay_s)
        self._player = AudioPlayer(source, self, after=after)  # type: ignore[arg-type]
        HarnessVoiceClient.players.append(self._player)
        self._player.start()

    def is_playing(self) -> bool:
        return self._player is not None and self._player.is_playing()

    def is_paused(self) -> bool:
        return self._player is not None and self._player.is_paused()

    def stop(self) -> None:
        if self._player is not None:
            self._player.stop()
            self._player = None

    @property
    def source(self) -> discord.AudioSource | None:
        return self._player.source if self._player else None


def _delayed(after: Any, delay_s: float) -> Any:
    def late(error: Exception | None) -> None:  # runs on the player thread, like the original
        time.sleep(delay_s)
        after(error)

    return late


@dataclass
class GuildFixture:
    guild: discord.Guild
    text_channel: discord.TextChannel
    voice_channel: discord.VoiceChannel
    everyone_role_id: int


class Harness:
    """Recorded Discord around one bot. Create with ``Harness(bot)`` before ``setup_hook``."""

    def __init__(self, bot: discord.Client) -> None:
        self.bot = bot
        self.calls: list[Recorded] = []
        self.recorded = asyncio.Event()
        self.last_channel_id = 0
        self.message_store: dict[int, dict[str, Any]] = {}
        self.attachment_bytes: dict[str, bytes] = {}
        self.cdn_fetches: list[str] = []
        # Who Discord says is in each server (GET /guilds/{id}/members/{user}), cached or not.
        self.remote_members: dict[int, dict[int, dict[str, Any]]] = {}
        self.member_fetch_status: int | None = None  # answer member fetches with this HTTP error
        self.locale = "en-US"  # the client language of members' interactions (e.g. "fr")
        self.guild_locale = "en-US"  # the servers' language (channel posts)
        state = bot._connection
        state.user = discord.ClientUser(
            state=state, data=self.user_payload(BOT_USER_ID, "voxclone", bot=True)
        )
        state.application_id = APPLICATION_ID
        bot.http.request = self._http_request  # type: ignore[method-assign]
        bot.http.get_from_cdn = self._get_from_cdn  # type: ignore[method-assign]
        self._token = async_context.set(_RecordingWebhookAdapter(self))
        HarnessVoiceClient.instances.clear()
        HarnessVoiceClient.players.clear()

    def close(self) -> None:
        """Restore the webhook adapter and let every player thread finish (late callbacks included)."""
        async_context.reset(self._token)
        for player in HarnessVoiceClient.players:
            player.join(timeout=5.0)

    # ---- recording --------------------------------------------------------------------------------

    def _record(self, rec: Recorded) -> None:
        self.calls.append(rec)
        self.recorded.set()

    async def _http_request(
        self, route: Route, *, files: Iterable[discord.File] | None = None, form: Any = None, **kwargs: Any
    ) -> Any:
        payload = kwargs.get("json")
        if form:
            for part in form:
                if part.get("name") == "payload_json":
                    payload = json.loads(part["value"])
        path = _path(route)
        self._record(
            Recorded("http", route.method, path, payload, {f.filename: _read_file(f) for f in files or []})
        )
        if route.method == "POST" and path == "/users/@me/channels":  # opening a DM
            recipient = int((payload or {}).get("recipient_id", 0))
            return {"id": str(snowflake()), "type": 1, "recipients": [self.user_payload(recipient, "member")]}
        if route.method == "POST" and path.endswith("/messages"):
            channel_id = int(path.split("/")[2])
            return self.message_payload(channel_id, payload or {}, author_id=BOT_USER_ID)
        if route.method == "GET" and "/messages/" in path:
            msg_id = int(path.rsplit("/", 1)[1])
            if msg_id in self.message_store:
                return self.message_store[msg_id]
            raise discord.NotFound(_FakeResponse(404), {"message": "Unknown Message", "code": 10008})
        if route.method == "GET" and path.startswith("/users/"):
            return self.user_payload(int(path.rsplit("/", 1)[1]), "user")
        if route.method == "GET" and path.startswith("/guilds/") and "/members/" in path:
            if self.member_fetch_status is not None:
                status = self.member_fetch_status
                raise discord.HTTPException(_FakeResponse(status), {"message": "Discord error", "code": 0})
            _, _, gid, _, uid = path.split("/")
            member = self.remote_members.get(int(gid), {}).get(int(uid))
            if member is None:
                raise discord.NotFound(_FakeResponse(404), {"message": "Unknown Member", "code": 10007})
            return member
        return {}

    async def _get_from_cdn(self, url: str) -> bytes:
        self.cdn_fetches.append(url)
        if url not in self.attachment_bytes:
            raise discord.NotFound(
                _FakeResponse(404), {"message": "This content is no longer available.", "code": 0}
            )
        return self.attachment_bytes[url]

    def responses(self) -> list[Recorded]:
        """Everything a member would see: interaction responses, follow-ups, edits, channel messages."""
        return [c for c in self.calls if c.payload is not None and c.method in ("POST", "PATCH")]

    def last_text(self) -> str:
        texts = [c.text for c in self.responses() if c.text]
        return texts[-1] if texts else ""

    def all_text(self) -> str:
        return "\n".join(c.text for c in self.responses())

    # ---- payloads ---------------------------------------------------------------------------------

    @staticmethod
    def user_payload(user_id: int, name: str, bot: bool = False) -> dict[str, Any]:
        return {
            "id": str(user_id),
            "username": name,
            "global_name": name,
            "discriminator": "0",
            "avatar": None,
            "bot": bot,
            "public_flags": 0,
        }

    def member_payload(self, user_id: int, name: str, roles: Iterable[int] = ()) -> dict[str, Any]:
        return {
            "user": self.user_payload(user_id, name),
            "roles": [str(r) for r in roles],
            "nick": None,
            "joined_at": "2026-01-01T00:00:00+00:00",
            "deaf": False,
            "mute": False,
            "flags": 0,
            "avatar": None,
            "communication_disabled_until": None,
            "pending": False,
        }

    def message_payload(
        self,
        channel_id: int,
        body: dict[str, Any],
        *,
        author_id: int,
        message_id: int | None = None,
        attachments: list[dict[str, Any]] | None = None,
        flags: int = 0,
        guild_id: int | None = None,
    ) -> dict[str, Any]:
        msg = {
            "id": str(message_id or snowflake()),
            "channel_id": str(channel_id),
            "author": self.user_payload(
                author_id, "voxclone" if author_id == BOT_USER_ID else "member", bot=author_id == BOT_USER_ID
            ),
            "content": body.get("content") or "",
            "timestamp": "2026-11-26T00:00:00+00:00",
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": attachments or [],
            "embeds": body.get("embeds") or [],
            "pinned": False,
            "type": 0,
            "flags": flags,
        }
        if guild_id:
            msg["guild_id"] = str(guild_id)
        self.message_store[int(msg["id"])] = msg
        return msg

    def add_guild(
        self,
        name: str = "Test Server",
        owner_id: int | None = None,
        members: Iterable[tuple[int, str, Iterable[int]]] = (),
        roles: Iterable[tuple[int, str, int]] = (),
        everyone_permissions: int = MEMBER_DEFAULT,
        bot_voice_permissions: int | None = None,
    ) -> GuildFixture:
        """A guild with one text and one voice channel, the bot, and the given members/roles."""
        guild_id = snowflake()
        text_id, voice_id = snowflake(), snowflake()
        owner_id = owner_id or snowflake()
        role_payloads = [
            {
                "id": str(guild_id),
                "name": "@everyone",
                "permissions": str(everyone_permissions),
                "position": 0,
                "color": 0,
                "hoist": False,
                "managed": False,
                "mentionable": False,
            }
        ]
        for rid, rname, perms in roles:
            role_payloads.append(
                {
                    "id": str(rid),
                    "name": rname,
                    "permissions": str(perms),
                    "position": 1,
                    "color": 0,
                    "hoist": False,
                    "managed": False,
                    "mentionable": False,
                }
            )
        overwrites = []
        if bot_voice_permissions is not None:
            overwrites.append(
                {
                    "id": str(BOT_USER_ID),
                    "type": 1,
                    "allow": str(bot_voice_permissions),
                    "deny": str(CONNECT | SPEAK & ~bot_voice_permissions),
                }
            )
        member_payloads = [self.member_payload(BOT_USER_ID, "voxclone")]
        member_payloads += [self.member_payload(uid, uname, rl) for uid, uname, rl in members]
        data = {
            "id": str(guild_id),
            "name": name,
            "owner_id": str(owner_id),
            "roles": role_payloads,
            "channels": [
                {
                    "id": str(text_id),
                    "type": 0,
                    "name": "general",
                    "position": 0,
                    "permission_overwrites": [],
                },
                {
                    "id": str(voice_id),
                    "type": 2,
                    "name": "Voice",
                    "position": 1,
                    "bitrate": 64000,
                    "user_limit": 0,
                    "permission_overwrites": overwrites,
                },
            ],
            "members": member_payloads,
            "voice_states": [],
            "emojis": [],
            "stickers": [],
            "features": [],
            "member_count": len(member_payloads),
            "large": False,
            "unavailable": False,
            "premium_tier": 0,
            "preferred_locale": self.guild_locale,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "system_channel_flags": 0,
            "nsfw_level": 0,
            "afk_timeout": 300,
        }
        guild = self.bot._connection._add_guild_from_data(data)  # type: ignore[arg-type]
        self.remote_members[guild_id] = {int(m["user"]["id"]): m for m in member_payloads}
        text = guild.get_channel(text_id)
        voice = guild.get_channel(voice_id)
        assert isinstance(text, discord.TextChannel) and isinstance(voice, discord.VoiceChannel)
        return GuildFixture(guild, text, voice, guild_id)

    def add_member(
        self, fx: GuildFixture, user_id: int, name: str, roles: Iterable[int] = ()
    ) -> discord.Member:
        member = discord.Member(
            data=self.member_payload(user_id, name, roles),
            guild=fx.guild,  # type: ignore[arg-type]
            state=self.bot._connection,
        )
        fx.guild._add_member(member)
        self.remote_members.setdefault(fx.guild.id, {})[user_id] = self.member_payload(user_id, name, roles)
        return member

    def left_while_offline(self, fx: GuildFixture, user_id: int) -> None:
        """``user_id`` left the server and the bot never saw the event: gone from Discord and the cache."""
        self.remote_members.get(fx.guild.id, {}).pop(user_id, None)
        if fx.guild.get_member(user_id) is not None:
            fx.guild._remove_member(discord.Object(user_id))  # type: ignore[arg-type]
            if fx.guild._member_count is not None:  # the server's member count went down with it
                fx.guild._member_count -= 1

    def uncache(self, fx: GuildFixture, user_id: int) -> None:
        """``user_id`` is still a member, but the bot's member list is incomplete (not chunked)."""
        fx.guild._remove_member(discord.Object(user_id))  # type: ignore[arg-type]
        fx.guild._member_count = None  # discord.py then reports the guild as not chunked

    def join_voice(self, fx: GuildFixture, user_id: int, channel: discord.VoiceChannel | None = None) -> None:
        """Put a member in a voice channel, as a VOICE_STATE_UPDATE would."""
        channel = channel or fx.voice_channel
        fx.guild._update_voice_state(
            {**VOICE_STATE, "user_id": str(user_id), "channel_id": str(channel.id)}, channel.id
        )

    def leave_voice(self, fx: GuildFixture, user_id: int) -> tuple[discord.VoiceState, discord.VoiceState]:
        """Take a member out of voice; returns the (before, after) states a listener would get."""
        member = fx.guild.get_member(user_id)
        channel = member.voice.channel if member and member.voice else None
        fx.guild._update_voice_state({**VOICE_STATE, "user_id": str(user_id), "channel_id": None}, None)
        return discord.VoiceState(data=VOICE_STATE, channel=channel), discord.VoiceState(data=VOICE_STATE)

    def attachment(
        self,
        filename: str,
        data: bytes,
        content_type: str,
        *,
        duration_s: float | None = None,
        url: str | None = None,
    ) -> dict[str, Any]:
        """An attachment payload whose URL is served by :meth:`serve` (see ``attachment_bytes``)."""
        att_id = snowflake()
        url = url or f"https://cdn.discordapp.invalid/attachments/{att_id}/{filename}"
        self.attachment_bytes[url] = data
        payload: dict[str, Any] = {
            "id": str(att_id),
            "filename": filename,
            "size": len(data),
            "url": url,
            "proxy_url": url,
            "content_type": content_type,
        }
        if duration_s is not None:
            payload["duration_secs"] = duration_s
            payload["waveform"] = "AAAA"
        return payload

    # ---- interactions -----------------------------------------------------------------------------

    def _base(
        self,
        fx: GuildFixture,
        member: discord.Member,
        itype: int,
        data: dict[str, Any],
        permissions: int | None = None,
        locale: str | None = None,
    ) -> dict[str, Any]:
        self.last_channel_id = fx.text_channel.id
        perms = permissions if permissions is not None else fx.text_channel.permissions_for(member).value
        member_payload = self.member_payload(member.id, member.name, [r.id for r in member.roles[1:]])
        member_payload["permissions"] = str(perms)
        return {
            "id": str(snowflake()),
            "application_id": str(APPLICATION_ID),
            "type": itype,
            "token": f"interaction-token-{snowflake()}",
            "version": 1,
            "guild_id": str(fx.guild.id),
            "channel_id": str(fx.text_channel.id),
            "channel": {"id": str(fx.text_channel.id), "type": 0},
            "member": member_payload,
            "data": data,
            "locale": locale or self.locale,  # the member's Discord client language (interaction.locale)
            "guild_locale": fx.guild.preferred_locale.value,
            "app_permissions": str(fx.text_channel.permissions_for(fx.guild.me).value),
            "attachment_size_limit": 10 * 1024 * 1024,
            "entitlements": [],
            "authorizing_integration_owners": {},
            "context": 0,
        }

    async def slash(
        self,
        fx: GuildFixture,
        member: discord.Member,
        command: str,
        options: dict[str, Any] | None = None,
        *,
        attachments: dict[str, dict[str, Any]] | None = None,
        users: dict[str, discord.Member] | None = None,
        permissions: int | None = None,
        roles: dict[str, int] | None = None,
        channels: dict[str, discord.abc.GuildChannel] | None = None,
        locale: str | None = None,
    ) -> discord.Interaction:
        """Dispatch ``/command [sub] option:value``; ``command`` may be "group sub".

        ``locale`` is the member's Discord client language, as Discord sends it ("fr", "en-US", "pt-BR").
        """
        opts: list[dict[str, Any]] = []
        resolved: dict[str, Any] = {}
        for name, value in (options or {}).items():
            opts.append({"name": name, "type": _option_type(value), "value": value})
        for name, att in (attachments or {}).items():
            opts.append({"name": name, "type": 11, "value": att["id"]})
            resolved.setdefault("attachments", {})[att["id"]] = att
        for name, user in (users or {}).items():
            opts.append({"name": name, "type": 6, "value": str(user.id)})
            resolved.setdefault("users", {})[str(user.id)] = self.user_payload(user.id, user.name)
            mp = self.member_payload(user.id, user.name, [r.id for r in user.roles[1:]])
            mp.pop("user")
            resolved.setdefault("members", {})[str(user.id)] = mp
        for name, role_id in (roles or {}).items():
            opts.append({"name": name, "type": 8, "value": str(role_id)})
            role = fx.guild.get_role(role_id)
            resolved.setdefault("roles", {})[str(role_id)] = {
                "id": str(role_id),
                "name": role.name if role else "role",
                "permissions": "0",
                "position": 1,
                "color": 0,
                "hoist": False,
                "managed": False,
                "mentionable": False,
            }
        for name, channel in (channels or {}).items():
            opts.append({"name": name, "type": 7, "value": str(channel.id)})
            resolved.setdefault("channels", {})[str(channel.id)] = {
                "id": str(channel.id),
                "type": channel.type.value,
                "name": channel.name,
                "permissions": str(channel.permissions_for(member).value),
            }
        parts = command.split()
        for sub in reversed(parts[1:]):
            opts = [{"name": sub, "type": 1, "options": opts}]
        data = {
            "id": str(snowflake()),
            "name": parts[0],
            "type": 1,
            "options": opts,
            "resolved": resolved,
            "guild_id": str(fx.guild.id),
        }
        return await self._dispatch(self._base(fx, member, 2, data, permissions, locale))

    async def autocomplete(
        self,
        fx: GuildFixture,
        member: discord.Member,
        command: str,
        focused: str,
        typed: str,
        options: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Type ``typed`` into option ``focused`` of ``/command``; returns the choices the bot offered."""
        opts: list[dict[str, Any]] = [
            {"name": name, "type": _option_type(value), "value": value}
            for name, value in (options or {}).items()
        ]
        opts.append({"name": focused, "type": 3, "value": typed, "focused": True})
        data = {
            "id": str(snowflake()),
            "name": command,
            "type": 1,
            "options": opts,
            "guild_id": str(fx.guild.id),
        }
        await self._dispatch(self._base(fx, member, 4, data))
        answer = next(c for c in reversed(self.calls) if c.path.endswith("/callback"))
        return list(((answer.payload or {}).get("data") or {}).get("choices") or [])

    async def message_command(
        self,
        fx: GuildFixture,
        member: discord.Member,
        name: str,
        message: dict[str, Any],
        *,
        locale: str | None = None,
    ) -> discord.Interaction:
        """Dispatch a message context-menu command on ``message`` (a message payload)."""
        data = {
            "id": str(snowflake()),
            "name": name,
            "type": 3,
            "target_id": message["id"],
            "resolved": {"messages": {message["id"]: message}},
            "guild_id": str(fx.guild.id),
        }
        return await self._dispatch(self._base(fx, member, 2, data, locale=locale))

    async def click(
        self, fx: GuildFixture, member: discord.Member, custom_id: str, message: dict[str, Any] | None = None
    ) -> discord.Interaction:
        """Press a button: dispatched like a gateway INTERACTION_CREATE, through the view store."""
        message = message or self.message_payload(fx.text_channel.id, {}, author_id=BOT_USER_ID)
        payload = self._base(fx, member, 3, {"custom_id": custom_id, "component_type": 2})
        payload["message"] = message
        interaction = discord.Interaction(data=payload, state=self.bot._connection)  # type: ignore[arg-type]
        self.bot._connection._view_store.dispatch_view(2, custom_id, interaction)
        await asyncio.sleep(0)
        return interaction

    async def _dispatch(self, payload: dict[str, Any]) -> discord.Interaction:
        interaction = discord.Interaction(data=payload, state=self.bot._connection)  # type: ignore[arg-type]
        await self.bot.tree._call(interaction)
        return interaction


class _FakeResponse:
    def __init__(self, status: int) -> None:
        self.status = status
        self.reason = "Not Found" if status == 404 else "Error"


def _option_type(value: Any) -> int:
    if isinstance(value, bool):
        return 5
    if isinstance(value, int):
        return 4
    if isinstance(value, float):
        return 10
    return 3
