#!/usr/bin/env python3
"""Markdown API reference from a protobuf FileDescriptorSet with source info.

Usage:
    tools/node_modules/.bin/buf build -o /tmp/broker.binpb
    tools/.venv/bin/python tools/api_doc.py /tmp/broker.binpb > docs/api.md

The descriptor set must carry source code info (the comments): buf images do by
default; with protoc, pass `--include_source_info` (and `--include_imports`
when documenting several files that import each other). Files under
`google/protobuf/` are left out. The output depends only on the input: same
descriptor set, same bytes.

Needs only the `protobuf` package (see tools/requirements.txt).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field

try:
    from google.protobuf import descriptor_pb2
except ImportError:  # pragma: no cover - a setup error, said plainly
    sys.exit(
        "api_doc: the `protobuf` package is missing; run it with the tools venv:\n"
        "  python3 -m venv tools/.venv && tools/.venv/bin/pip install -q -r tools/requirements.txt\n"
        "  tools/.venv/bin/python tools/api_doc.py DESCRIPTOR_SET > docs/api.md"
    )

FDP = descriptor_pb2.FieldDescriptorProto

# Field numbers of the descriptor messages, for SourceCodeInfo location paths.
FILE_MESSAGE_TYPE = 4
FILE_ENUM_TYPE = 5
FILE_SERVICE = 6
FILE_SYNTAX = 12
MESSAGE_FIELD = 2
MESSAGE_NESTED_TYPE = 3
MESSAGE_ENUM_TYPE = 4
MESSAGE_ONEOF_DECL = 8
ENUM_VALUE = 2
SERVICE_METHOD = 2

SCALAR_NAMES = {
    FDP.TYPE_DOUBLE: "double",
    FDP.TYPE_FLOAT: "float",
    FDP.TYPE_INT64: "int64",
    FDP.TYPE_UINT64: "uint64",
    FDP.TYPE_INT32: "int32",
    FDP.TYPE_FIXED64: "fixed64",
    FDP.TYPE_FIXED32: "fixed32",
    FDP.TYPE_BOOL: "bool",
    FDP.TYPE_STRING: "string",
    FDP.TYPE_BYTES: "bytes",
    FDP.TYPE_UINT32: "uint32",
    FDP.TYPE_SFIXED32: "sfixed32",
    FDP.TYPE_SFIXED64: "sfixed64",
    FDP.TYPE_SINT32: "sint32",
    FDP.TYPE_SINT64: "sint64",
}


# ---------------------------------------------------------------------------
# Comments to Markdown


def comment_paragraphs(text: str) -> list[str]:
    """A proto comment as paragraphs: the lines of a paragraph joined with
    spaces, blank lines separating paragraphs."""
    paragraphs: list[str] = []
    current: list[str] = []
    for line in text.split("\n"):
        line = line.strip()
        if line:
            current.append(line)
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return [escape_text(p) for p in paragraphs]


_CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)


def escape_text(text: str) -> str:
    """Keeps code spans as they are; outside them escapes what Markdown would
    otherwise read as markup (the comments are plain text for rustdoc, so
    this rarely changes anything)."""
    out: list[str] = []
    pos = 0
    for m in _CODE_SPAN.finditer(text):
        out.append(_escape_plain(text[pos : m.start()]))
        out.append(m.group(0))
        pos = m.end()
    out.append(_escape_plain(text[pos:]))
    result = "".join(out)
    # A paragraph must not start a block (heading, quote, list) by accident.
    if re.match(r"([#>+-]|\d+[.)])(\s|$)", result):
        result = "\\" + result
    return result


def _escape_plain(text: str) -> str:
    text = text.replace("\\", "\\\\")
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for ch in "*[]":
        text = text.replace(ch, "\\" + ch)
    # `_` is only markup at a word boundary (CommonMark: no intraword emphasis).
    text = re.sub(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", r"\\_", text)
    return text


def cell(paragraphs: list[str]) -> str:
    """Paragraphs in one table cell: a single line, `|` escaped (also inside
    code spans, as GitHub-flavoured tables require)."""
    return "<br><br>".join(paragraphs).replace("|", "\\|") if paragraphs else ""


# ---------------------------------------------------------------------------
# Anchors, as GitHub computes them from heading text


class Slugger:
    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    def slug(self, heading: str) -> str:
        base = heading.strip().lower()
        base = re.sub(r"[^\w\- ]", "", base)
        base = base.replace(" ", "-")
        n = self.seen.get(base)
        if n is None:
            self.seen[base] = 1
            return base
        self.seen[base] = n + 1
        return f"{base}-{n}"


# ---------------------------------------------------------------------------
# The model: what to document, in declaration order


@dataclass
class Doc:
    comment: list[str]


@dataclass
class MethodDoc(Doc):
    name: str
    input_type: str
    output_type: str
    client_streaming: bool
    server_streaming: bool


@dataclass
class ServiceDoc(Doc):
    name: str
    full_name: str
    methods: list[MethodDoc]
    anchor: str = ""


@dataclass
class FieldDoc(Doc):
    name: str
    number: int
    label: str  # "", "repeated", "optional", "map"
    type_name: str  # scalar name or fully qualified ".pkg.Type"
    map_key: str = ""
    map_value: str = ""
    oneof: str = ""


@dataclass
class OneofDoc(Doc):
    name: str
    fields: list[str]


@dataclass
class MessageDoc(Doc):
    name: str  # relative to the package, e.g. "Outer.Inner"
    full_name: str
    fields: list[FieldDoc]
    oneofs: list[OneofDoc]
    anchor: str = ""


@dataclass
class EnumValueDoc(Doc):
    name: str
    number: int


@dataclass
class EnumDoc(Doc):
    name: str
    full_name: str
    values: list[EnumValueDoc]
    anchor: str = ""


@dataclass
class FileDoc(Doc):
    name: str
    package: str
    services: list[ServiceDoc] = field(default_factory=list)
    messages: list[MessageDoc] = field(default_factory=list)
    enums: list[EnumDoc] = field(default_factory=list)
    anchor: str = ""


def load(path: str) -> list[FileDoc]:
    with open(path, "rb") as f:
        data = f.read()
    fds = descriptor_pb2.FileDescriptorSet()
    try:
        fds.ParseFromString(data)
    except Exception as e:  # noqa: BLE001 - any decode error means a bad input
        sys.exit(f"api_doc: {path} is not a FileDescriptorSet: {e}")

    files = [f for f in fds.file if not f.name.startswith("google/protobuf/")]
    if not files:
        sys.exit(f"api_doc: {path} holds no file to document")
    for f in files:
        if not f.source_code_info.location:
            sys.exit(
                f"api_doc: {f.name} has no source code info (no comments); build the set "
                "with `buf build -o FILE.binpb` or `protoc --include_source_info`"
            )

    # Map entry types (generated for map fields), by fully qualified name.
    map_entries: dict[str, descriptor_pb2.DescriptorProto] = {}

    def collect_map_entries(prefix: str, messages) -> None:
        for m in messages:
            full = f"{prefix}.{m.name}"
            if m.options.map_entry:
                map_entries[full] = m
            collect_map_entries(full, m.nested_type)

    for f in fds.file:
        collect_map_entries("." + f.package if f.package else "", f.message_type)

    docs = [file_doc(f, map_entries) for f in sorted(files, key=lambda f: f.name)]
    return docs


def file_doc(f: descriptor_pb2.FileDescriptorProto, map_entries) -> FileDoc:
    comments: dict[tuple[int, ...], str] = {}
    detached: dict[tuple[int, ...], list[str]] = {}
    for loc in f.source_code_info.location:
        path = tuple(loc.path)
        text = loc.leading_comments or loc.trailing_comments
        if text and path not in comments:
            comments[path] = text
        if loc.leading_detached_comments and path not in detached:
            detached[path] = list(loc.leading_detached_comments)

    def comment(path: tuple[int, ...]) -> list[str]:
        return comment_paragraphs(comments.get(path, ""))

    pkg_prefix = "." + f.package if f.package else ""
    # The file's own comment: the comments just above `syntax`.
    file_comment: list[str] = []
    for text in detached.get((FILE_SYNTAX,), []) + [comments.get((FILE_SYNTAX,), "")]:
        file_comment += comment_paragraphs(text)
    doc = FileDoc(comment=file_comment, name=f.name, package=f.package)

    for si, s in enumerate(f.service):
        spath = (FILE_SERVICE, si)
        methods = [
            MethodDoc(
                comment=comment(spath + (SERVICE_METHOD, mi)),
                name=m.name,
                input_type=m.input_type,
                output_type=m.output_type,
                client_streaming=m.client_streaming,
                server_streaming=m.server_streaming,
            )
            for mi, m in enumerate(s.method)
        ]
        doc.services.append(
            ServiceDoc(comment=comment(spath), name=s.name, full_name=f"{pkg_prefix}.{s.name}", methods=methods)
        )

    def add_enum(e, path, rel_name: str) -> None:
        doc.enums.append(
            EnumDoc(
                comment=comment(path),
                name=rel_name,
                full_name=f"{pkg_prefix}.{rel_name}",
                values=[
                    EnumValueDoc(comment=comment(path + (ENUM_VALUE, vi)), name=v.name, number=v.number)
                    for vi, v in enumerate(e.value)
                ],
            )
        )

    def add_message(m, path, rel_name: str) -> None:
        if m.options.map_entry:
            return
        full = f"{pkg_prefix}.{rel_name}"
        oneof_names = [o.name for o in m.oneof_decl]
        # Proto3 `optional` fields live in synthetic oneofs, not documented as oneofs.
        real_oneofs = {
            fd.oneof_index for fd in m.field if fd.HasField("oneof_index") and not fd.proto3_optional
        }
        fields = []
        for fi, fd in enumerate(m.field):
            fdoc = FieldDoc(
                comment=comment(path + (MESSAGE_FIELD, fi)),
                name=fd.name,
                number=fd.number,
                label="",
                type_name=type_name(fd),
            )
            entry = map_entries.get(fd.type_name) if fd.type == FDP.TYPE_MESSAGE else None
            if entry is not None and fd.label == FDP.LABEL_REPEATED:
                key, value = sorted(entry.field, key=lambda x: x.number)
                fdoc.label, fdoc.map_key, fdoc.map_value = "map", type_name(key), type_name(value)
            elif fd.label == FDP.LABEL_REPEATED:
                fdoc.label = "repeated"
            elif fd.proto3_optional or (f.syntax == "proto2" and fd.label == FDP.LABEL_OPTIONAL):
                fdoc.label = "optional"
            elif fd.label == FDP.LABEL_REQUIRED:
                fdoc.label = "required"
            if fd.HasField("oneof_index") and fd.oneof_index in real_oneofs:
                fdoc.oneof = oneof_names[fd.oneof_index]
            fields.append(fdoc)
        oneofs = [
            OneofDoc(
                comment=comment(path + (MESSAGE_ONEOF_DECL, oi)),
                name=o.name,
                fields=[fd.name for fd in m.field if fd.HasField("oneof_index") and fd.oneof_index == oi],
            )
            for oi, o in enumerate(m.oneof_decl)
            if oi in real_oneofs
        ]
        doc.messages.append(
            MessageDoc(comment=comment(path), name=rel_name, full_name=full, fields=fields, oneofs=oneofs)
        )
        for ni, n in enumerate(m.nested_type):
            add_message(n, path + (MESSAGE_NESTED_TYPE, ni), f"{rel_name}.{n.name}")
        for ei, e in enumerate(m.enum_type):
            add_enum(e, path + (MESSAGE_ENUM_TYPE, ei), f"{rel_name}.{e.name}")

    for mi, m in enumerate(f.message_type):
        add_message(m, (FILE_MESSAGE_TYPE, mi), m.name)
    for ei, e in enumerate(f.enum_type):
        add_enum(e, (FILE_ENUM_TYPE, ei), e.name)
    return doc


def type_name(fd: descriptor_pb2.FieldDescriptorProto) -> str:
    if fd.type in (FDP.TYPE_MESSAGE, FDP.TYPE_ENUM, FDP.TYPE_GROUP):
        return fd.type_name
    return SCALAR_NAMES[fd.type]


# ---------------------------------------------------------------------------
# Rendering


def render(files: list[FileDoc]) -> str:
    slugger = Slugger()
    title = "API reference"
    packages = sorted({f.package for f in files if f.package})
    if packages:
        title = f"API reference: {', '.join(packages)}"
    slugger.slug(title)
    slugger.slug("Contents")

    # Anchors in document order (duplicates get GitHub's -1, -2 suffixes).
    anchors: dict[str, str] = {}  # fully qualified type name -> anchor
    method_anchors: dict[tuple[str, str], str] = {}
    for f in files:
        f.anchor = slugger.slug(f.name)
        for s in f.services:
            s.anchor = slugger.slug(s.name)
            for m in s.methods:
                method_anchors[(s.full_name, m.name)] = slugger.slug(f"{s.name}.{m.name}")
        for m in f.messages:
            m.anchor = slugger.slug(m.name)
            anchors[m.full_name] = m.anchor
        for e in f.enums:
            e.anchor = slugger.slug(e.name)
            anchors[e.full_name] = e.anchor

    def ref(type_name: str, package: str) -> str:
        """A type as Markdown: a link to its section when documented here."""
        if not type_name.startswith("."):
            return f"`{type_name}`"
        name = type_name[1:]
        if package and name.startswith(package + "."):
            name = name[len(package) + 1 :]
        anchor = anchors.get(type_name)
        return f"[`{name}`](#{anchor})" if anchor else f"`{name}`"

    out: list[str] = []
    w = out.append
    w(f"# {title}\n")
    w(
        "Generated by `tools/api_doc.py` from the `.proto` files under `proto/`; do not edit by hand.\n"
        "Regenerate with:\n"
    )
    w("```sh")
    w("tools/node_modules/.bin/buf build -o /tmp/broker.binpb")
    w("tools/.venv/bin/python tools/api_doc.py /tmp/broker.binpb > docs/api.md")
    w("```\n")

    w("## Contents\n")
    for f in files:
        w(f"- [{f.name}](#{f.anchor})")
        for s in f.services:
            w(f"  - Service [{s.name}](#{s.anchor}): " + ", ".join(
                f"[{m.name}](#{method_anchors[(s.full_name, m.name)]})" for m in s.methods
            ))
        if f.messages:
            w("  - Messages: " + ", ".join(f"[{m.name}](#{m.anchor})" for m in f.messages))
        if f.enums:
            w("  - Enums: " + ", ".join(f"[{e.name}](#{e.anchor})" for e in f.enums))
    w("")

    for f in files:
        w(f"## {f.name}\n")
        if f.package:
            w(f"Package `{f.package}`.\n")
        for p in f.comment:
            w(p + "\n")

        for s in f.services:
            w(f"### {s.name}\n")
            for p in s.comment:
                w(p + "\n")
            w("| RPC | Request | Response |")
            w("|---|---|---|")
            for m in s.methods:
                req = ("stream " if m.client_streaming else "") + ref(m.input_type, f.package)
                resp = ("stream " if m.server_streaming else "") + ref(m.output_type, f.package)
                w(f"| [{m.name}](#{method_anchors[(s.full_name, m.name)]}) | {req} | {resp} |")
            w("")
            for m in s.methods:
                w(f"#### {s.name}.{m.name}\n")
                req = ("stream " if m.client_streaming else "") + ref(m.input_type, f.package)
                resp = ("stream " if m.server_streaming else "") + ref(m.output_type, f.package)
                w(f"- Request: {req}")
                w(f"- Response: {resp}")
                w(f"- Streaming: {streaming(m)}\n")
                for p in m.comment:
                    w(p + "\n")

        for m in f.messages:
            w(f"### {m.name}\n")
            for p in m.comment:
                w(p + "\n")
            if not m.fields:
                w("No fields.\n")
                continue
            w("| Field | Number | Type | Description |")
            w("|---|---|---|---|")
            for fd in m.fields:
                if fd.label == "map":
                    if fd.map_value.startswith("."):
                        t = f"map&lt;`{fd.map_key}`, {ref(fd.map_value, f.package)}&gt;"
                    else:
                        t = f"`map<{fd.map_key}, {fd.map_value}>`"
                else:
                    t = (fd.label + " " if fd.label else "") + ref(fd.type_name, f.package)
                if fd.oneof:
                    t += f" (oneof `{fd.oneof}`)"
                w(f"| `{fd.name}` | {fd.number} | {t.replace('|', chr(92) + '|')} | {cell(fd.comment)} |")
            w("")
            for o in m.oneofs:
                members = ", ".join(f"`{n}`" for n in o.fields)
                text = " ".join(o.comment)
                w(f"Oneof `{o.name}` ({members}): {text}\n" if text else f"Oneof `{o.name}`: {members}.\n")

        for e in f.enums:
            w(f"### {e.name}\n")
            for p in e.comment:
                w(p + "\n")
            w("| Value | Number | Description |")
            w("|---|---|---|")
            for v in e.values:
                w(f"| `{v.name}` | {v.number} | {cell(v.comment)} |")
            w("")

    text = "\n".join(out)
    return text.rstrip("\n") + "\n"


def streaming(m: MethodDoc) -> str:
    if m.client_streaming and m.server_streaming:
        return "bidirectional"
    if m.client_streaming:
        return "client streaming"
    if m.server_streaming:
        return "server streaming"
    return "no (unary)"


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] in ("-h", "--help"):
        print("usage: api_doc.py DESCRIPTOR_SET > docs/api.md", file=sys.stderr)
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 2
    files = load(argv[1])
    sys.stdout.reconfigure(encoding="utf-8", newline="\n")
    sys.stdout.write(render(files))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
