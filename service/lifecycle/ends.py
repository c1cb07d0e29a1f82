"""A file's end lines checked: an import refuses a file cut short rather than taking what is there for the whole.

A transfer broken off between two lines leaves a file whose every line is whole; a client that ignores the
error (or a script that keeps what it received) would import it as a complete, shorter conversation. An export
therefore ends each conversation with its `conversation.end` line (the number of its items) and an operators'
export of many ends the file with `export.end` (the number of its conversations), and the headers say so. Where
they do, the lines must be there and the counts must match; a file written by hand may leave both out. Files
joined end to end (`cat a.jsonl b.jsonl`, two exports of many) are read as one after the other: a header after
the first file's end line starts the second, whose own end line counts its own conversations."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from service.lifecycle.jsonl import (
    CONVERSATION_END,
    EXPORT_END,
    End,
    Entry,
    ExportEnd,
    Header,
    ItemLine,
    Withdrawn,
    bad_line,
)

_CUT = "it was cut short, and nothing is imported"


class _Reading:
    """Where the file is: the conversation whose lines are being read and what the file has said so far."""

    def __init__(self) -> None:
        self.header: Header | None = None
        self.items = 0
        self.ended = False  # the conversation's end line (or its withdrawn line) was read
        self.conversations = 0
        self.file_needs_end = False
        self.file_ended = False
        self.last_line = 1

    def check_conversation_ended(self, line: int, before: str) -> None:
        if self.header is not None and self.header.needs_end and not self.ended:
            raise bad_line(
                line,
                f"{before} the end line of the conversation that starts on line {self.header.line} "
                f'({{"object": "{CONVERSATION_END}"}}): {_CUT}',
            )


def whole(entries: Iterable[Entry]) -> Iterator[Header | ItemLine | Withdrawn]:
    """`entries` (jsonl.parse) as they come, without the end lines, once each has been checked; a missing one
    is a 400 naming the line before which it should have come, or the file's last line."""
    at = _Reading()
    for entry in entries:
        at.last_line = entry.line
        if at.file_ended and not isinstance(entry, Header):
            raise bad_line(entry.line, f'a line after the file\'s end line ({{"object": "{EXPORT_END}"}})')
        if isinstance(entry, Header):
            at.check_conversation_ended(entry.line, "this header comes before")
            if at.file_ended:  # the next of files joined end to end
                at.file_ended, at.file_needs_end, at.conversations = False, False, 0
            at.header, at.items, at.ended = entry, 0, False
            at.conversations += 1
            at.file_needs_end = at.file_needs_end or entry.file_needs_end
            yield entry
        elif isinstance(entry, ItemLine | Withdrawn):
            if at.ended:
                raise bad_line(entry.line, "a line after its conversation's end line, before a header")
            if isinstance(entry, Withdrawn):
                at.ended = True
                at.conversations -= 1
            else:
                at.items += 1
            yield entry
        elif isinstance(entry, End):
            if at.ended:
                raise bad_line(entry.line, "a second end line for one conversation")
            _check_same_conversation(at, entry)
            if entry.items != at.items:
                raise bad_line(
                    entry.line,
                    f"the conversation's end line counts {entry.items} items, but {at.items} lines before it "
                    f"since its header on line {at.header.line if at.header else 1} hold items: lines are missing",
                )
            at.ended = True
        else:
            _check_export_end(at, entry)
    at.check_conversation_ended(at.last_line, "the file ends before")
    if at.file_needs_end and not at.file_ended:
        raise bad_line(at.last_line, f'the file ends before its end line ({{"object": "{EXPORT_END}"}}): {_CUT}')


def _check_same_conversation(at: _Reading, entry: End) -> None:
    """Lines of two exports spliced together can count right by chance; the ids they name cannot."""
    header = at.header
    if header is not None and None not in (header.id, entry.id) and header.id != entry.id:
        raise bad_line(
            entry.line,
            f"this end line is conversation {entry.id!r:.70}'s, but the conversation that starts on line "
            f"{header.line} is {header.id!r:.70}: lines of two exports were joined",
        )


def _check_export_end(at: _Reading, entry: ExportEnd) -> None:
    at.check_conversation_ended(entry.line, "the file's end line comes before")
    if entry.conversations != at.conversations:
        raise bad_line(
            entry.line,
            f"the file's end line counts {entry.conversations} conversations, but it holds {at.conversations}: "
            "conversations are missing",
        )
    at.file_ended = True
