"""The ``voxclone`` command line: run the bot or the worker, manage the database, try the speech tools.

Every subcommand returns an exit code; errors we can explain print one line to stderr (no traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence

from core.errors import VoxcloneError
from core.logs import configure_logging
from core.settings import Settings, load_settings

log = logging.getLogger("voxclone.cli")

Handler = Callable[[argparse.Namespace], int]


def _fail(message: str, code: int = 2) -> int:
    print(f"voxclone: {message}", file=sys.stderr)
    return code


def _settings() -> Settings:
    return load_settings()


def cmd_bot(args: argparse.Namespace) -> int:
    """Start the Discord bot (migrations first)."""
    settings = _settings()
    settings.require_discord_token()
    from bot.runtime import run_bot

    return run_bot(settings)


def cmd_sync(args: argparse.Namespace) -> int:
    """Register slash commands with Discord (a deliberate act, not done at every start)."""
    settings = _settings()
    from bot.runtime import sync_commands

    return sync_commands(settings, args.guild)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from storage.migrate import upgrade

    url = args.database_url or _settings().database_url
    head = asyncio.run(upgrade(url))
    print(f"database upgraded: revision {head} (the latest)")
    return 0


def cmd_db_check(args: argparse.Namespace) -> int:
    from storage.migrate import check

    url = args.database_url or _settings().database_url
    report = asyncio.run(check(url))
    print(report.summary(), file=sys.stdout if report.healthy else sys.stderr)
    return 0 if report.healthy else 1


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 when the bot (its heartbeat file) or a worker (``/readyz``) is healthy, 1 when not."""
    from bot.health import check_heartbeat, check_worker

    settings = _settings()
    if args.worker is not None:
        url = args.worker or f"http://127.0.0.1:{settings.worker_port}"
        problem = check_worker(url)
        what = f"worker {url} ready"
    else:
        if settings.health_file is None:
            return _fail(
                "HEALTH_FILE is not set, so the bot writes no heartbeat to check: set it (the Docker "
                "image sets /tmp/voxclone-bot.health), or use --worker for a worker."
            )
        problem = check_heartbeat(settings.health_file, max_age_s=args.max_age)
        what = "bot connected to Discord"
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    print(f"healthy: {what}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voxclone",
        description="voxclone: a Discord bot that speaks in its members' own cloned voices.",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show log lines on stderr (the bot and worker always log)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p_bot = sub.add_parser(
        "bot", help="run the Discord bot", description="Run the Discord bot. Needs DISCORD_TOKEN."
    )
    p_bot.set_defaults(func=cmd_bot)

    p_sync = sub.add_parser(
        "sync-commands",
        help="register the slash commands with Discord",
        description="Register the slash commands with Discord: globally, or in one server with --guild "
        "(instant; DEV_GUILD_ID does this at every start).",
    )
    p_sync.add_argument("--guild", type=int, help="a server id: register there only")
    p_sync.set_defaults(func=cmd_sync)

    p_health = sub.add_parser(
        "health",
        help="exit 0 when the bot (or a worker) is healthy: for container healthchecks",
        description="Check the running bot's heartbeat (HEALTH_FILE), or a worker's /readyz with "
        "--worker. Exit status 0 when healthy, 1 when not (with the reason).",
    )
    p_health.add_argument(
        "--worker",
        nargs="?",
        const="",
        metavar="URL",
        help="check a speech worker instead (default http://127.0.0.1:WORKER_PORT)",
    )
    p_health.add_argument(
        "--max-age", type=float, default=60.0, metavar="S", help="oldest acceptable heartbeat (default 60)"
    )
    p_health.set_defaults(func=cmd_health)

    p_db = sub.add_parser("db", help="database migrations and health", description="Manage the database.")
    db_sub = p_db.add_subparsers(dest="db_command", metavar="DB_COMMAND", required=True)
    for name, func, text in (
        ("upgrade", cmd_db_upgrade, "apply all migrations (safe to re-run, also after an interruption)"),
        ("check", cmd_db_check, "check integrity and that the schema is at the latest migration"),
    ):
        p = db_sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("--database-url", help="override DATABASE_URL")
        p.set_defaults(func=func)

    try:
        from bot.cli_voices import register as register_voices
        from storage.repos.api_voices import ApiVoiceLibrary
        from worker.cli import register
    except ImportError as exc:  # the speech commands are optional on a bot-only install
        log.debug("speech commands unavailable: %s", exc)
    else:
        register(sub, voice_library=ApiVoiceLibrary)
        register_voices(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Handler = args.func
    # One-shot tools print one clear line on failure; their log lines are for --verbose.
    # `voxclone bot` and `voxclone worker` configure logging from settings when they start.
    configure_logging("DEBUG" if args.verbose else "CRITICAL", "text")
    try:
        return func(args)
    except VoxcloneError as exc:  # the one root: configuration, start-up, storage, speech, policy alike
        log.debug("%s failed", args.command, exc_info=True)  # the traceback, with LOG_LEVEL=DEBUG only
        return _fail(exc.message)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
