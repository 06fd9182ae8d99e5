"""Foundations every other package builds on: errors, settings, logs, audio constants, media intake."""
