"""The node's text log: one line per record, whatever a record's message, arguments or traceback hold.

Found by probing (probe6, section 8): a calling AE title with a newline reached the log through
pynetdicom's message and its traceback, starting a line that read as a record of its own.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import traceback

from uronode.logs import FORMAT, HELD_BACK_FROM_HERE, FloodFilter, OneLineFormatter, escape_controls

FORGED = "EVIL\n2026-12-05 13:08:29,907 ERROR 1 uronode: forged\r"


def _record(msg: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("pynetdicom.utils", logging.ERROR, __file__, 1, msg, args, exc_info)


def test_control_characters_are_escaped_and_other_text_is_kept() -> None:
    assert escape_controls("Müller^Jörg 山田 1.2.840.10008 a\\b") == "Müller^Jörg 山田 1.2.840.10008 a\\b"
    assert escape_controls("a\nb\rc\td\x00e\x1bf\x7fg\x85h\u2028i") == "a\\nb\\rc\\td\\x00e\\x1bf\\x7fg\\x85h\\u2028i"


def test_a_record_with_a_newline_in_its_message_arguments_or_traceback_is_one_line() -> None:
    formatter = OneLineFormatter(FORMAT)
    line = formatter.format(_record("Invalid 'Calling AE Title' value %r from %s", FORGED, "Müller"))
    assert "\n" not in line and "\r" not in line
    assert line.endswith("value 'EVIL\\n2026-12-05 13:08:29,907 ERROR 1 uronode: forged\\r' from Müller")
    try:
        raise ValueError(f"Invalid value {FORGED}")
    except ValueError as exc:
        line = formatter.format(_record("association refused: %s", exc, exc=exc))
    assert len(line.splitlines()) == 1
    assert "\\nTraceback (most recent call last):\\n" in line  # the traceback is on its record's line
    assert "ValueError: Invalid value EVIL\\n2026-12-05 13:08:29,907 ERROR 1 uronode: forged\\r" in line
    record = _record("worker failed: %s", "out of memory\nat step 3")
    record.stack_info = "".join(traceback.format_stack())
    assert len(formatter.format(record).splitlines()) == 1


def test_the_node_writes_each_record_as_one_line() -> None:
    """Through the set-up every entry point calls: the handler on stderr formats with escapes."""
    script = (
        "import logging\n"
        "from uronode.logs import setup_logging\n"
        "setup_logging('INFO')\n"
        "log = logging.getLogger('dicomweb.workers')\n"
        f"log.warning('job 7 failed on %s: %s', 'gpu1', {FORGED!r})\n"
        "try:\n"
        f"    raise RuntimeError({FORGED!r})\n"
        "except RuntimeError:\n"
        "    log.exception('job 8: %s', 'Jörg')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    lines = done.stderr.splitlines()
    assert len(lines) == 2, done.stderr
    assert " WARNING " in lines[0] and lines[0].endswith(
        "dicomweb.workers: job 7 failed on gpu1: EVIL\\n2026-12-05 13:08:29,907 ERROR 1 uronode: forged\\r")
    assert " ERROR " in lines[1] and "job 8: Jörg\\nTraceback" in lines[1]


def test_library_warnings_quoting_a_patients_name_reach_the_log_only_at_debug_and_on_one_line() -> None:
    """Probe 40: highdicom's warning about a name without a caret quoted the patient's name on stderr as it was,
    a line break in it forging a record. Warnings go through logging: nothing at INFO, one escaped line at DEBUG."""
    script = (
        "import sys\n"
        "from highdicom.valuerep import check_person_name\n"
        "from uronode.logs import setup_logging\n"
        "setup_logging(sys.argv[1])\n"
        f"check_person_name({FORGED!r})\n"
        "print('done', file=sys.stderr)\n"
    )
    quiet = subprocess.run([sys.executable, "-c", script, "INFO"], capture_output=True, text=True, timeout=60,
                           check=True)
    assert quiet.stderr.splitlines() == ["done"], quiet.stderr
    loud = subprocess.run([sys.executable, "-c", script, "DEBUG"], capture_output=True, text=True, timeout=60,
                          check=True)
    (line,) = [text for text in loud.stderr.splitlines() if "py.warnings" in text]
    assert " WARNING " in line and "EVIL\\n2026-12-05 13:08:29,907 ERROR 1 uronode: forged\\r" in line
    assert not any(text.startswith("2026-12-05 13:08:29,907") for text in loud.stderr.splitlines())


def test_a_flood_of_one_warning_from_the_network_side_is_held_back_and_counted() -> None:
    """Probe 40: 300 malformed associations in 7 s wrote 300 error records with tracebacks. At most 20 of one
    message a minute from the DICOM side; the next one let through says how many were held back; other loggers'
    records and other messages pass."""
    flood = FloodFilter()

    def record(name: str, msg: str, at: float, level: int = logging.ERROR, peer: str = "AE") -> logging.LogRecord:
        made = logging.LogRecord(name, level, __file__, 1, msg, (peer,), None)
        made.created = at
        return made

    records = [record("scp.fastpath", "%s from x: association aborted", 1000.0 + i / 10) for i in range(300)]
    passed = [flood.filter(r) for r in records]
    assert sum(passed) == 20 and passed[:20] == [True] * 20
    # the last one let through says that the next are held back (review 37: only the next line said so, if any)
    assert [r.getMessage().endswith(f"({HELD_BACK_FROM_HERE})") for r in records[:20]] == [False] * 19 + [True]
    assert flood.filter(record("scp.server", "other %s", 1010.0))  # another message
    # another peer's line of the same message (review 37: one peer's flood hid the others')
    assert flood.filter(record("scp.fastpath", "%s from x: association aborted", 1010.0, peer="CT1"))
    assert flood.filter(record("uronode.worker", "%s from x: association aborted", 1010.0))  # not the network side
    assert flood.filter(record("scp.fastpath", "%s from x: association aborted", 1010.0, logging.INFO))
    later = record("scp.fastpath", "%s from x: association aborted", 1061.0)
    assert flood.filter(later)
    assert later.getMessage() == "AE from x: association aborted (280 more like it held back in the minute before)"
