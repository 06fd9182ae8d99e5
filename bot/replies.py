"""One way to answer an interaction, and one place that turns exceptions into sentences for members.

``respond`` works whether the interaction was already answered or deferred, and when its 15-minute
token has expired it falls back to the channel (public answers) or a direct message (private ones).
``VoxcloneTree.on_error`` is the command tree's single error handler.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import discord
from babel.numbers import format_decimal
from discord import app_commands

from core.errors import VoxcloneError
from core.i18n import N_, current_locale, ngettext, set_locale, tr
from worker.errors import QualityRejected

log = logging.getLogger("voxclone.replies")

TOKEN_LIFETIME = timedelta(minutes=15)  # Discord's interaction token validity
TOKEN_MARGIN = timedelta(seconds=30)  # stop using the token a little before it expires
GENERIC_FAILURE = N_("Something went wrong on my side and it has been logged. Please try again in a minute.")
RESTARTING_REPLY = N_("voxclone is restarting: try again in a minute.")


def token_expired(interaction: discord.Interaction, now: datetime | None = None) -> bool:
    now = now or datetime.now(UTC)
    return now - interaction.created_at > TOKEN_LIFETIME - TOKEN_MARGIN


async def respond(
    interaction: discord.Interaction,
    content: str | None = None,
    *,
    ephemeral: bool = True,
    embed: discord.Embed | None = None,
    files: list[discord.File] | None = None,
    view: discord.ui.View | None = None,
) -> discord.Message | None:
    """Answer the interaction however its state allows; returns the message when one is known."""
    kwargs: dict[str, Any] = {"content": content}
    if embed is not None:
        kwargs["embed"] = embed
    if files:
        kwargs["files"] = files
    if view is not None:
        kwargs["view"] = view
    try:
        if token_expired(interaction):
            raise _Expired
        if not interaction.response.is_done():
            await interaction.response.send_message(ephemeral=ephemeral, **kwargs)
            return None
        return await interaction.followup.send(ephemeral=ephemeral, wait=True, **kwargs)
    except (_Expired, discord.NotFound):
        return await _fallback(interaction, ephemeral, kwargs)


class _Expired(Exception):
    pass


async def _fallback(
    interaction: discord.Interaction, private: bool, kwargs: dict[str, Any]
) -> discord.Message | None:
    """The token is gone: post in the channel (public) or DM the member (private)."""
    kwargs.pop("view", None)
    try:
        if private:
            return await interaction.user.send(**kwargs)
        channel = interaction.channel
        if isinstance(channel, discord.abc.Messageable):
            content = kwargs.pop("content", None)
            mention = interaction.user.mention
            return await channel.send(content=f"{mention} {content}" if content else mention, **kwargs)
    except discord.HTTPException:
        log.warning("could not deliver a late reply", extra={"interaction_id": interaction.id})
    return None


class Refused(app_commands.CheckFailure):
    """A check (e.g. a cog's ``interaction_check``) refused with one of our user-facing errors."""

    def __init__(self, error: VoxcloneError) -> None:
        super().__init__(error.message)
        self.error = error


def user_message(error: BaseException) -> str:
    """A sentence a member can act on; never a traceback, token or internal id."""
    if isinstance(error, app_commands.CommandInvokeError):
        error = error.original
    if isinstance(error, Refused):
        error = error.error
    if isinstance(error, QualityRejected):
        report = error.details.get("report")
        reasons = [r for r in getattr(report, "reasons", None) or [] if r != error.message]
        bullet = "".join(f"\n• {r}" for r in reasons)
        return f"{error.message}{bullet}"
    if isinstance(error, VoxcloneError):
        return error.message
    if isinstance(error, app_commands.NoPrivateMessage):
        return tr("This command only works inside a server.")
    if isinstance(error, app_commands.MissingPermissions):
        return tr(
            "You need the {permissions} permission to do that.", permissions=_perms(error.missing_permissions)
        )
    if isinstance(error, app_commands.BotMissingPermissions):
        return tr(
            "I'm missing the {permissions} permission here. "
            "A server admin can grant it in the channel or role settings.",
            permissions=_perms(error.missing_permissions),
        )
    if isinstance(error, app_commands.CommandOnCooldown):
        return tr("Slow down a little: try again in {seconds} s.", seconds=round(error.retry_after))
    if isinstance(error, app_commands.TransformerError):
        return tr("I couldn't understand `{value}` for that option.", value=error.value)
    if isinstance(error, app_commands.CheckFailure):
        return tr("You can't use this command here.")
    if isinstance(error, discord.Forbidden):
        return tr("Discord refused that action: I may be missing a permission in this channel.")
    return tr(GENERIC_FAILURE)


def size_text(size: int) -> str:
    """A byte count a member reads at a glance: "512 bytes", "45 kB", "1.2 MB" (decimal units)."""
    if size < 1000:
        return ngettext("{n} byte", "{n} bytes", size)
    if size < 1_000_000:
        return tr("{size} kB", size=format_decimal(round(size / 1000), locale=current_locale()))
    return tr("{size} MB", size=format_decimal(round(size / 1_000_000, 1), locale=current_locale()))


def _perms(names: list[str]) -> str:
    """Discord's permission names as its client shows them (``manage_guild`` → "Manage Server")."""
    return ", ".join(name.replace("_", " ").replace("guild", "server").title() for name in names)


class VoxcloneTree(app_commands.CommandTree):
    """The command tree with the bot's one error handler."""

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        """Answer in the member's language; refuse new commands while the bot shuts down, saying so."""
        use_interaction_locale(interaction)
        if getattr(self.client, "shutting_down", False):
            await respond(interaction, tr(RESTARTING_REPLY), ephemeral=True)
            return False
        return True

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        original = error.original if isinstance(error, app_commands.CommandInvokeError) else error
        known = isinstance(original, VoxcloneError | app_commands.AppCommandError)
        command = interaction.command.qualified_name if interaction.command else "?"
        if known and not isinstance(original, app_commands.CommandInvokeError):
            log.info(
                "command refused",
                extra={
                    "command": command,
                    "code": getattr(original, "code", type(original).__name__),
                    "guild_id": interaction.guild_id,
                    "user_id": interaction.user.id,
                },
            )
        else:
            log.error(
                "command failed",
                exc_info=(type(original), original, original.__traceback__),
                extra={"command": command, "guild_id": interaction.guild_id, "user_id": interaction.user.id},
            )
        await respond(interaction, user_message(original), ephemeral=True)


def use_interaction_locale(interaction: discord.Interaction) -> str:
    """Speak the member's client language for the rest of this interaction (components call it too)."""
    return set_locale(interaction.locale.value)


def server_locale(guild: object) -> str | None:
    """The server's language (Discord's "preferred locale"): what the bot posts in its channels uses it.

    Use it where a channel post is written: ``with using_locale(server_locale(guild)): text = tr(...)``.
    """
    locale = getattr(guild, "preferred_locale", None)
    value = getattr(locale, "value", locale)
    return value if isinstance(value, str) else None


def guild_member(interaction: discord.Interaction) -> tuple[discord.Guild, discord.Member]:
    """The server and the member behind a server-only command (raises NoPrivateMessage elsewhere)."""
    guild, user = interaction.guild, interaction.user
    if guild is None or not isinstance(user, discord.Member):
        raise app_commands.NoPrivateMessage()
    return guild, user
