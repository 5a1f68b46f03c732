"""A labelled magika data set from real files on this machine (no download).

    python -m lepton_ir.testing.corpus data magika out/     # out/magika_calib.npz, out/magika_test.npz

Files are the corpus's walk of real files (Python stdlib, C headers, /usr/share; `corpus._real_files`),
labelled by extension as magika's content type (the extension -> label table of magika 1.0.3's
content-type knowledge base, restricted to the model's 214 output labels), at most PER_EXT files per
extension, split by a hash of their path into a calibration part (1 in 5) and a disjoint test part.
The features are magika's own (`corpus.magika_features`). An extension is a weak label (a `.txt`
can hold anything), so accuracy here is lower than magika's published figures; what it measures
well is the change an optimization makes (bench/quant_accuracy.py, the README's first command).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from lepton_ir.testing import corpus

PER_EXT = 120

# magika standard_v3_3 output labels (config.min.json "target_labels_space"), in output order.
MAGIKA_LABELS = (
    "3gp ace ai aidl apk applebplist appleplist asm asp autohotkey autoit awk batch bazel bib bmp bzip c "
    "cab cat chm clojure cmake cobol coff coffeescript cpp crt crx cs csproj css csv dart deb dex dicom "
    "diff dm dmg doc dockerfile docx dsstore dwg dxf elf elixir emf eml epub erb erlang flac flv fortran "
    "gemfile gemspec gif gitattributes gitmodules go gradle groovy gzip h5 handlebars haskell hcl hlp "
    "htaccess html icns ico ics ignorefile ini internetshortcut ipynb iso jar java javabytecode "
    "javascript jinja jp2 jpeg json jsonl julia kotlin latex lha lisp lnk lua m3u m4 macho makefile "
    "markdown matlab mht midi mkv mp3 mp4 mscompress msi mum npy npz nupkg objectivec ocaml odp ods odt "
    "ogg one onnx otf outlook parquet pascal pcap pdb pdf pebin pem perl php pickle png po postscript "
    "powershell ppt pptx prolog proteindb proto psd python pythonbytecode pytorch qt r randombytes "
    "randomtxt rar rdf rpm rst rtf ruby rust scala scss sevenzip sgml shell smali snap solidity sql "
    "sqlite squashfs srt stlbinary stltext sum svg swf swift tar tcl textproto tga thumbsdb tiff toml "
    "torrent tsv ttf twig txt typescript vba vcxproj verilog vhdl vtt vue wasm wav webm webp winregistry "
    "wmf woff woff2 xar xls xlsb xlsx xml xpi xz yaml yara zig zip zlibstream "
).split()
# extension -> content type, from magika 1.0.3's content_types_kb (labels of the model only).
MAGIKA_EXT = dict(kv.split(":") for kv in (
    "3gp:3gp 7z:sevenzip CBL:cobol COB:cobol CPY:cobol F90:fortran P:prolog R:r S:asm ace:ace ai:ai "
    "aidl:aidl apk:apk asm:asm asp:asp aspx:asp au3:autoit awk:awk bat:batch bib:bib bmp:bmp "
    "bplist:applebplist bz2:bzip bzl:bazel c:c c++:cpp cab:cab cat:cat cbl:cobol cc:cpp cer:crt chm:chm "
    "cjs:javascript cl:lisp class:javabytecode clj:clojure cljc:clojure cljr:clojure cljs:clojure "
    "cmake:cmake cob:cobol coffee:coffeescript cpp:cpp cppm:cpp cpy:cobol crt:crt crx:crx cs:cs "
    "csproj:csproj css:css csv:csv csx:cs cts:typescript cxx:cpp dart:dart dcm:dicom deb:deb der:crt "
    "dex:dex diff:diff dll:pebin dm:dm dmg:dmg doc:doc docm:docx docx:docx dwg:dwg dxf:dxf elf:elf "
    "emf:emf eml:eml epub:epub erb:erb erl:erlang exe:pebin exs:elixir f03:fortran f90:fortran "
    "f95:fortran flac:flac flv:flv gemspec:gemspec gif:gif go:go gpg:pem gradle:gradle groovy:groovy "
    "gz:gzip gzip:gzip h5:h5 handlebars:handlebars hbs:handlebars hcl:hcl hdf5:h5 hlp:hlp hrl:erlang "
    "hs:haskell htm:html html:html icns:icns ico:ico ics:ics ini:ini ipynb:ipynb iso:iso ixx:cpp j2:jinja "
    "jar:jar java:java jinja:jinja jinja2:jinja jl:julia jp2:jp2 jpeg:jpeg jpg:jpeg js:javascript "
    "json:json jsonl:jsonl jsonld:jsonl klib:jar kt:kotlin kts:kotlin l:lisp lha:lha lhs:haskell "
    "lisp:lisp lnk:lnk lsp:lisp lua:lua lzh:lha m:matlab m3u:m3u m3u8:m3u m4:m4 markdown:markdown "
    "matlab:matlab md:markdown mht:mht mid:midi mjs:javascript mkv:mkv ml:ocaml mli:ocaml mm:objectivec "
    "mov:qt mp3:mp3 mp4:mp4 msi:msi mts:typescript mum:mum npy:npy npz:npz nupkg:nupkg o:coff obj:coff "
    "odp:odp ods:ods odt:odt ogg:ogg one:one onnx:onnx otf:otf parquet:parquet pas:pascal patch:diff "
    "pbtxt:textproto pcap:pcap pcapng:pcap pdb:pdb pdf:pdf pem:pem php:php pickle:pickle pkg:xar "
    "pkl:pickle pl:perl plist:applebplist png:png po:po pp:pascal ppt:ppt pptm:pptx pptx:pptx pqt:parquet "
    "pro:prolog proto:proto ps:postscript ps1:powershell psd:psd pt:pytorch pth:pytorch pub:pem py:python "
    "pyc:pythonbytecode pyi:python pyo:pythonbytecode rar:rar rb:ruby rdf:rdf reg:winregistry rpm:rpm "
    "rs:rust rst:rst rtf:rtf s:asm scala:scala scss:scss sgml:sgml sh:shell smali:smali snap:snap "
    "sol:solidity sql:sql sqlite:sqlite sqlite3:sqlite srt:srt stl:stlbinary sty:latex sum:sum svg:svg "
    "swf:swf swift:swift tar:tar tar.bz2:bzip tar.gz:gzip tbz2:bzip tcl:tcl tex:latex textpb:textproto "
    "textproto:textproto tga:tga tgz:gzip tif:tiff tiff:tiff toml:toml torrent:torrent ts:typescript "
    "tsv:tsv ttc:ttf ttf:ttf twig:twig txt:txt url:internetshortcut v:verilog vb:vba vba:vba vbs:vba "
    "vcxproj:vcxproj verilog:verilog vh:verilog vhd:vhdl vlg:verilog vtt:vtt vue:vue wasm:wasm wav:wav "
    "webm:webm webp:webp webvtt:vtt wmf:wmf woff:woff woff2:woff2 xar:xar xht:html xhtml:html xls:xls "
    "xlsb:xlsb xlsm:xlsx xlsx:xlsx xml:xml xpi:xpi xz:xz yaml:yaml yar:yara yara:yara yml:yaml zig:zig "
    "zip:zip "
).split())


def dataset() -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(calibration, test) lists of (path, label index), disjoint."""
    calib, test = [], []
    for ext, paths in corpus._real_files():
        label = MAGIKA_EXT.get(ext.lstrip("."))
        if label is None or label not in MAGIKA_LABELS:
            continue
        for p in paths[:PER_EXT]:
            item = (p, MAGIKA_LABELS.index(label))
            (calib if int(hashlib.sha1(p.encode()).hexdigest(), 16) % 5 == 0 else test).append(item)
    return calib, test


def features_of(path: str) -> np.ndarray:
    """magika's features of the file at `path` (only its first and last 4 KiB are read)."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(0)
        if size <= 8192:
            data = f.read()
        else:
            head = f.read(4096)
            f.seek(size - 4096)
            data = head + f.read(4096)
    return corpus.magika_features(data)


def write_npz(out_dir: str | os.PathLike, calib_count: int = 64, test_count: int | None = None) -> tuple[Path, Path]:
    """Write `magika_calib.npz` (`bytes`: [N, 2048] int32, no labels) and `magika_test.npz`
    (`bytes` and `labels`) under `out_dir`; return both paths."""
    calib, test = dataset()
    if not test:
        raise ValueError("no labelled files found on this machine (Python stdlib, C headers, /usr/share)")
    if test_count is not None:
        step = max(1, len(test) // test_count)
        test = test[::step][:test_count]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pc, pt = out / "magika_calib.npz", out / "magika_test.npz"
    np.savez(pc, bytes=np.stack([features_of(p) for p, _ in calib[:calib_count]]).astype(np.int32))
    np.savez(pt, bytes=np.stack([features_of(p) for p, _ in test]).astype(np.int32),
             labels=np.asarray([lab for _, lab in test], np.int64))
    return pc, pt
