"""The ``alma-pipeline`` step type: the simulated ALMA Pipeline of the ALMA workflow mock-up."""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import time
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import quoteattr

from wsrun.core.effects import Effect, create_dir, create_file
from wsrun.core.fileio import write_bytes_atomic
from wsrun.core.fs import ContentUnknown
from wsrun.core.step import Plan, Result, StepContext, StepError

NAME = "alma-pipeline"
DOC = """Simulate one run of the ALMA Pipeline on an ObsUnitSet (OUS): wait, then fail or write products.

It stands in for the real Pipeline in the ALMA data-processing workflow
(``engine/wsrun/packs/alma/recipes/``). A run waits a random interval (up to ``delay`` seconds),
then either fails with a simulated processing error (with probability
``failure_rate``, 1 in 10 by default) or writes the products tree the real
Pipeline leaves behind::

    <output>/<progID>_<timestamp>/SOUS/GOUS/<uid___X1_X1_Xb2>/products/
        pl-report-X1-X1-Xb2-<timestamp>.xml      the Pipeline report
        product-0-X1-X1-Xb2-<timestamp>.data     five data products
        ...
        weblog-X1-X1-Xb2-<timestamp>.zip         the weblog, a small HTML tree

The plan draws the timestamp (now, unless given) and the outcome from a
random generator seeded by ``seed`` with the run's identity, so the dry run
and the real run agree, and a seeded run is reproducible. A failing run is a
step error in the dry run too. The content of every file depends only on the
inputs, so a run repeated with the same ``timestamp`` changes nothing.
"""

#: The executives (ALMA regional centres and the observatory) a Pipeline runs at.
EXECUTIVES = ("EA", "EU", "JAO", "NA")
#: How many data products a run writes.
PRODUCT_COUNT = 5
OUS_UID = re.compile(r"^uid://([A-Za-z0-9]+)/([A-Za-z0-9]+)/([A-Za-z0-9]+)$")
TIMESTAMP = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}$"

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["progID", "ousUID", "exec", "output"],
    "properties": {
        "progID": {
            "description": "The ID of the observing program (project) the OUS belongs to.",
            "type": "string",
            "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]*$",
            "examples": ["2015.1.00657.S"],
        },
        "ousUID": {
            "description": "The UID of the OUS to process: uid://A/B/C.",
            "type": "string",
            "pattern": OUS_UID.pattern,
            "examples": ["uid://X1/X1/Xb2"],
        },
        "exec": {
            "description": "The executive the Pipeline runs at (recorded in the report).",
            "enum": list(EXECUTIVES),
        },
        "recipe": {
            "description": "The Pipeline processing recipe (recorded in the report).",
            "type": "string",
            "default": "PipelineCalibration",
            "examples": ["PipelineCalibration", "PipelineImaging"],
        },
        "output": {
            "description": "The directory the products tree is written under (created if missing).",
            "type": "string",
            "minLength": 1,
            "examples": ["/tmp/pipeline-EU"],
        },
        "delay": {
            "description": "Longest simulated processing time in seconds; a run waits a random "
            "interval between half of it and all of it (0: no wait).",
            "type": "number",
            "minimum": 0,
            "default": 0,
            "examples": [5],
        },
        "failure_rate": {
            "description": "Probability that a run fails with a simulated processing error.",
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "default": 0.1,
            "examples": [0, 0.1, 1],
        },
        "seed": {
            "description": "Seed of the random generator (with progID, ousUID and timestamp): "
            "the same seed gives the same outcome and delay. Default: unseeded.",
            "type": ["integer", "string", "null"],
            "examples": [42],
        },
        "timestamp": {
            "description": "The run's timestamp (UTC, milliseconds); default: now. Naming "
            "a timestamp makes the run repeatable.",
            "type": ["string", "null"],
            "pattern": TIMESTAMP,
            "examples": ["2018-07-19T07:10:03.781"],
        },
    },
}

EXAMPLES = [
    """- id: pipeline
  uses: alma-pipeline
  with:
    progID: "{{ inputs.progID }}"
    ousUID: "{{ inputs.ousUID }}"
    exec: EU
    output: /tmp/pipeline-EU
    delay: 5
""",
    """- id: always_fails
  uses: alma-pipeline
  with: {progID: 2015.1.00657.S, ousUID: "uid://X1/X1/Xb2", exec: EU, output: out, failure_rate: 1}
""",
]

OUTPUTS = {
    "timestamp": "the run's timestamp, e.g. 2018-07-19T07:10:03.781",
    "products_dir": "the name of the run's top directory, <progID>_<timestamp with _ for - and :>",
    "root": "absolute path of that directory",
    "products": "absolute path of the products directory",
    "ous_dir": "the OUS's directory name, e.g. uid___X1_X1_Xb2",
    "weblog": "absolute path of the weblog zip",
    "weblog_name": "the weblog zip's file name",
    "report": "absolute path of the Pipeline report XML",
    "report_xml": "the Pipeline report's text",
    "data_products": "file names of the five data products",
    "files": "absolute paths of every file the run writes",
}


@dataclass
class PipelineRun:
    """What apply does: wait, then write these files (directories first)."""

    wait: float
    dirs: list[str]
    files: list[tuple[str, bytes]]


def ous_tag(ous_uid: str) -> str:
    """``uid://X1/X1/Xb2`` -> ``X1-X1-Xb2``, the OUS's part of file names."""
    match = OUS_UID.match(ous_uid)
    if match is None:
        raise StepError(f"not an OUS UID (uid://A/B/C): {ous_uid!r}")
    return "-".join(match.groups())


def ous_dir(ous_uid: str) -> str:
    """``uid://X1/X1/Xb2`` -> ``uid___X1_X1_Xb2``, the OUS's directory name."""
    ous_tag(ous_uid)
    return ous_uid.replace(":", "_").replace("/", "_")


def products_dir_name(prog_id: str, timestamp: str) -> str:
    """``2015.1.00657.S`` and ``2018-07-19T07:10:03.781`` -> ``2015.1.00657.S_2018_07_19T07_10_03.781``."""
    return f"{prog_id}_{timestamp.replace('-', '_').replace(':', '_')}"


def now_timestamp() -> str:
    """The current UTC time as the Pipeline writes it, to the millisecond."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    prog_id, ous_uid, exec_ = params["progID"], params["ousUID"], params["exec"]
    tag, ous = ous_tag(ous_uid), ous_dir(ous_uid)
    timestamp = params.get("timestamp") or now_timestamp()
    seed = params.get("seed")
    rng = random.Random(f"{seed}|{prog_id}|{ous_uid}|{timestamp}") if seed is not None else None
    draw = rng.random if rng is not None else random.random
    delay = float(params.get("delay", 0))
    wait = delay * (0.5 + draw() / 2) if delay else 0.0
    rate = float(params.get("failure_rate", 0.1))
    if draw() < rate:
        if not ctx.dry_run:
            time.sleep(wait)  # the real Pipeline fails after working a while
        raise StepError(
            f"simulated Pipeline processing error for {ous_uid} at {exec_} "
            f"(timestamp {timestamp}, failure rate {rate:g})"
        )
    name = products_dir_name(prog_id, timestamp)
    root = os.path.join(ctx.path(params["output"]), name)
    products = os.path.join(root, "SOUS", "GOUS", ous, "products")
    report_name = f"pl-report-{tag}-{timestamp}.xml"
    weblog_name = f"weblog-{tag}-{timestamp}.zip"
    data_names = [f"product-{i}-{tag}-{timestamp}.data" for i in range(PRODUCT_COUNT)]
    report_xml = _report(
        prog_id,
        ous_uid,
        exec_,
        params.get("recipe", "PipelineCalibration"),
        timestamp,
        data_names,
        weblog_name,
    )
    contents = {
        report_name: report_xml.encode(),
        **{n: _data_product(n, i) for i, n in enumerate(data_names)},
        weblog_name: _weblog_zip(ous_uid, timestamp, data_names),
    }
    effects: list[Effect] = []
    dirs = []
    current = products
    missing = []
    while ctx.fs.stat(current) is None:
        missing.append(current)
        current = os.path.dirname(current)
    if not ctx.fs.is_dir(current):
        raise StepError("exists and is not a directory", path=current)
    for d in reversed(missing):
        dirs.append(d)
        effects.append(create_dir(d))
    files = []
    for file_name in sorted(contents):
        path, data = os.path.join(products, file_name), contents[file_name]
        if not _same_content(ctx, path, data):
            files.append((path, data))
            effects.append(create_file(path, len(data), content=data))
    outputs = {
        "timestamp": timestamp,
        "products_dir": name,
        "root": root,
        "products": products,
        "ous_dir": ous,
        "weblog": os.path.join(products, weblog_name),
        "weblog_name": weblog_name,
        "report": os.path.join(products, report_name),
        "report_xml": report_xml,
        "data_products": data_names,
        "files": [os.path.join(products, n) for n in sorted(contents)],
    }
    return Plan(effects=effects, outputs=outputs, data=PipelineRun(wait, dirs, files))


def apply(plan: Plan, ctx: StepContext) -> Result:
    run: PipelineRun = plan.data
    if plan.effects and run.wait:
        remaining = ctx.remaining()
        time.sleep(run.wait if remaining is None else min(run.wait, remaining))
        ctx.check_deadline()
    for d in run.dirs:
        os.makedirs(d, exist_ok=True)
    for path, data in run.files:
        write_bytes_atomic(path, data)
    return Result(effects=list(plan.effects), outputs=plan.outputs)


def _same_content(ctx: StepContext, path: str, data: bytes) -> bool:
    info = ctx.fs.stat(path)
    if info is None:
        return False
    if not info.is_file:
        raise StepError("exists and is not a regular file", path=path)
    if info.size != len(data):
        return False
    try:
        with ctx.fs.open(path) as f:
            return f.read() == data
    except ContentUnknown:
        return False


def _report(
    prog_id: str,
    ous_uid: str,
    exec_: str,
    recipe: str,
    timestamp: str,
    data_names: list[str],
    weblog_name: str,
) -> str:
    """The Pipeline report: what ran where, and what it produced."""
    products = "".join(f"    <product name={quoteattr(n)}/>\n" for n in data_names)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<pipeline-report progID={quoteattr(prog_id)} ousUID={quoteattr(ous_uid)} "
        f"executive={quoteattr(exec_)} recipe={quoteattr(recipe)} timestamp={quoteattr(timestamp)}>\n"
        "  <status>success</status>\n"
        f"  <weblog name={quoteattr(weblog_name)}/>\n"
        f"  <products>\n{products}  </products>\n"
        "</pipeline-report>\n"
    )


def _data_product(name: str, index: int) -> bytes:
    """A data product's bytes: 1-5 KiB that depend only on its name."""
    size = 1024 * (index + 1)
    out = bytearray(f"# simulated ALMA data product {name}\n".encode())
    block = hashlib.sha256(name.encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


def _weblog_zip(ous_uid: str, timestamp: str, data_names: list[str]) -> bytes:
    """The weblog: a small HTML tree, zipped with fixed member times so the
    same run always gives the same bytes."""
    stages = ("hifa_importdata", "hifa_flagdata", "hif_applycal")
    style = "body { font-family: sans-serif; }\n"
    links = "".join(
        f'<li><a href="stage{i}/t2-4m.html">{i}. {s}</a></li>' for i, s in enumerate(stages, 1)
    )
    pages = {
        "index.html": _html(
            f"Weblog of {ous_uid}", f"<p>Pipeline run {timestamp}</p><ul>{links}</ul>", ""
        ),
        "t1-1.html": _html("Overview", "".join(f"<p>{n}</p>" for n in data_names), ""),
        "css/weblog.css": style,
        **{
            f"stage{i}/t2-4m.html": _html(f"Stage {i}: {s}", f"<p>{s} completed</p>", "../")
            for i, s in enumerate(stages, 1)
        },
    }
    when = datetime.strptime(timestamp[:19], "%Y-%m-%dT%H:%M:%S").timetuple()[:6]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for member in sorted(pages):
            info = zipfile.ZipInfo(member, date_time=when)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            z.writestr(info, pages[member])
    return buf.getvalue()


def _html(title: str, body: str, up: str) -> str:
    """One weblog page; ``up`` leads from its directory to the weblog's root."""
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title>'
        f'<link rel="stylesheet" href="{up}css/weblog.css"></head>\n'
        f"<body><h1>{title}</h1>{body}</body></html>\n"
    )
