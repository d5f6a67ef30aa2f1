"""openvla-7b's Llama-2 tokenizer files, rebuilt offline from the npm package ``llama-tokenizer-js`` (data only).

There is no Hugging Face hub access here, but the npm package ``llama-tokenizer-js@1.2.2`` carries the LLaMA-1/2
SentencePiece vocabulary (32000 pieces, one per line, base64) and its 61249 BPE merges (pairs of uint16 piece ids,
little-endian, base64, in priority order) as two string constants in its JavaScript file. The package built them
from Hugging Face's Llama ``tokenizer.json``, so turning them back into one is a format conversion, not a model of
the tokenizer: no piece, id or merge is invented here.

What the written directory holds, and where each choice comes from:

* ``tokenizer.json``: a ``tokenizers`` BPE model laid out like the Llama-2 ``LlamaTokenizerFast`` file that
  openvla-7b ships: byte fallback (``<0x00>``..``<0xFF>`` = ids 3..258) with ``fuse_unk``; a normaliser that
  prepends ``"▁"`` and replaces every space by ``"▁"`` (no pre-tokeniser); ``<s> $A`` as the template (BOS
  added); the SentencePiece decoder (``"▁"`` -> space, byte fallback, fuse, strip one leading space);
  ``<unk>``/``<s>``/``</s>`` at 0/1/2 and openvla-7b's ``<PAD>`` added at 32000. The merges are written in the
  older ``"a b"`` string form, which upstream's pinned tokenizers 0.19.1 can parse (newer releases also write
  ``["a", "b"]`` pairs, which 0.19 rejects).
* ``tokenizer_config.json``, ``special_tokens_map.json``, ``added_tokens.json``: the fields openvla-7b ships,
  i.e. what upstream's converter (``vla-scripts/extern/convert_openvla_weights_to_hf.py``) writes after loading
  ``meta-llama/Llama-2-7b-hf`` with ``model_max_length=2048, padding_side="right"``, adding ``<PAD>`` and
  registering ``PrismaticProcessor`` for ``AutoProcessor`` (hence ``processor_class`` and ``auto_map``).
  docs/policy.md lists the public copies these were checked against.

``tokenizer.model`` (the SentencePiece protobuf) is not written: the package has no piece scores or trainer
settings, and the fast tokenizer (all that upstream's processor and ours load) does not need it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path

NPM_PACKAGE = "llama-tokenizer-js"
NPM_VERSION = "1.2.2"
# sha256 of `npm pack llama-tokenizer-js@1.2.2` (the registry's tarball; npm's own sha1 is 4db5d5f0...).
NPM_TARBALL_SHA256 = "ee83014ac8b379b16cf8d81e99ffcdb23dfade8c0d2e751bd06e7dc0b8476e72"
NPM_TARBALL_NAME = f"{NPM_PACKAGE}-{NPM_VERSION}.tgz"

VOCAB_SIZE = 32000
MERGE_COUNT = 61249
SPACE_PIECE = "▁"
SPACE_PIECE_ID = 29871
UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<PAD>"
SPECIAL_IDS = {UNK: 0, BOS: 1, EOS: 2}
PAD_ID = VOCAB_SIZE
BYTE_PIECE_OFFSET = 3  # <0x00> is id 3, <0xFF> id 258
MODEL_MAX_LENGTH = 2048  # upstream's llm_max_length

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = REPO_ROOT / ".cache"

_JS_FILE = "package/llama-tokenizer.js"
_PACKAGE_JSON = "package/package.json"
_VOCAB_CONSTANT = "llama_vocab_base64"
_MERGES_CONSTANT = "llama_merges_binary"


class TokenizerBuildError(ValueError):
    """The npm tarball is not the expected package, or its data do not form the Llama-2 vocabulary."""


@dataclass(frozen=True)
class LlamaVocabulary:
    pieces: list[str]  # index = token id
    merges: list[tuple[str, str]]  # priority order


# --------------------------------------------------------------------------------------------------- locations
def default_tokenizer_dir() -> Path:
    """Where scripts/bootstrap.sh builds the tokenizer (``.cache/llama2-tokenizer`` in the repository)."""
    return CACHE_DIR / "llama2-tokenizer"


def default_npm_tarball() -> Path:
    return CACHE_DIR / "npm" / NPM_TARBALL_NAME


def require_tokenizer_dir(path: str | Path | None = None) -> Path:
    """The built tokenizer directory, or a FileNotFoundError that says how to build it."""
    directory = Path(path) if path is not None else default_tokenizer_dir()
    missing = [name for name in TOKENIZER_FILES if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"the Llama-2 tokenizer is not built: {directory} lacks {', '.join(missing)}. Run scripts/bootstrap.sh "
            f"(it fetches {NPM_PACKAGE}@{NPM_VERSION} with npm and builds it), or `fanvla policy build-tokenizer "
            f"--npm-tarball {NPM_TARBALL_NAME} --out {directory}` after `npm pack {NPM_PACKAGE}@{NPM_VERSION}`")
    return directory


# ------------------------------------------------------------------------------------------- reading the package
def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _member_text(archive: tarfile.TarFile, name: str, tarball: Path) -> str:
    try:
        member = archive.extractfile(name)
    except KeyError:
        member = None
    if member is None:
        raise TokenizerBuildError(f"{tarball} has no {name}: not an npm tarball of {NPM_PACKAGE}")
    return member.read().decode("utf-8")


def _string_constant(source: str, name: str, tarball: Path) -> bytes:
    match = re.search(rf'const {name} = "([A-Za-z0-9+/=]+)"', source)
    if match is None:
        raise TokenizerBuildError(f"{tarball}: {_JS_FILE} has no base64 constant '{name}'")
    return base64.b64decode(match.group(1), validate=True)


def read_npm_tarball(tarball: str | Path, verify_checksum: bool = True) -> LlamaVocabulary:
    """The vocabulary and merges stored in ``llama-tokenizer-js@1.2.2``'s tarball, checked for consistency."""
    tarball = Path(tarball)
    if not tarball.is_file():
        raise FileNotFoundError(f"npm tarball {tarball} does not exist (get it with `npm pack "
                                f"{NPM_PACKAGE}@{NPM_VERSION}`)")
    if verify_checksum and (actual := sha256_of(tarball)) != NPM_TARBALL_SHA256:
        raise TokenizerBuildError(f"{tarball} has sha256 {actual}, expected {NPM_TARBALL_SHA256} "
                                  f"({NPM_PACKAGE}@{NPM_VERSION} from the npm registry)")
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            package = json.loads(_member_text(archive, _PACKAGE_JSON, tarball))
            source = _member_text(archive, _JS_FILE, tarball)
    except (tarfile.TarError, OSError, EOFError) as error:
        raise TokenizerBuildError(f"{tarball} is not a readable .tgz: {error}") from None
    if (package.get("name"), package.get("version")) != (NPM_PACKAGE, NPM_VERSION):
        raise TokenizerBuildError(f"{tarball} holds {package.get('name')}@{package.get('version')}, expected "
                                  f"{NPM_PACKAGE}@{NPM_VERSION}")
    pieces = _string_constant(source, _VOCAB_CONSTANT, tarball).decode("utf-8").split("\n")
    merge_bytes = _string_constant(source, _MERGES_CONSTANT, tarball)
    if len(merge_bytes) % 4:
        raise TokenizerBuildError(f"{tarball}: {_MERGES_CONSTANT} is {len(merge_bytes)} bytes, not whole uint16 pairs")
    ids = struct.unpack(f"<{len(merge_bytes) // 2}H", merge_bytes)
    if max(ids, default=0) >= len(pieces):
        raise TokenizerBuildError(f"{tarball}: a merge names piece id {max(ids)} but the vocabulary has "
                                  f"{len(pieces)} pieces")
    merges = [(pieces[ids[i]], pieces[ids[i + 1]]) for i in range(0, len(ids), 2)]
    vocabulary = LlamaVocabulary(pieces=pieces, merges=merges)
    check_vocabulary(vocabulary)
    return vocabulary


def check_vocabulary(vocabulary: LlamaVocabulary) -> None:
    """The invariants of Llama-2's vocabulary that the tokenizer files and OpenVLA's id rules rely on."""
    pieces, merges = vocabulary.pieces, vocabulary.merges
    problems = []
    if len(pieces) != VOCAB_SIZE:
        problems.append(f"{len(pieces)} pieces, expected {VOCAB_SIZE}")
    if len(set(pieces)) != len(pieces):
        problems.append("duplicate pieces")
    for token, token_id in SPECIAL_IDS.items():
        if token_id >= len(pieces) or pieces[token_id] != token:
            problems.append(f"id {token_id} is not {token}")
    expected_bytes = [f"<0x{value:02X}>" for value in range(256)]
    if pieces[BYTE_PIECE_OFFSET:BYTE_PIECE_OFFSET + 256] != expected_bytes:
        problems.append(f"ids {BYTE_PIECE_OFFSET}..{BYTE_PIECE_OFFSET + 255} are not the byte pieces <0x00>..<0xFF>")
    if len(pieces) > SPACE_PIECE_ID and pieces[SPACE_PIECE_ID] != SPACE_PIECE:
        problems.append(f"id {SPACE_PIECE_ID} is not '{SPACE_PIECE}'")
    if any(" " in piece for piece in pieces):
        problems.append("a piece contains a space (merges are written as 'a b' strings)")
    if len(merges) != MERGE_COUNT:
        problems.append(f"{len(merges)} merges, expected {MERGE_COUNT}")
    known = set(pieces)
    unknown = [f"{left} {right}" for left, right in merges if left + right not in known]
    if unknown:
        problems.append(f"{len(unknown)} merges produce pieces outside the vocabulary, e.g. '{unknown[0]}'")
    if problems:
        raise TokenizerBuildError("not the Llama-2 vocabulary: " + "; ".join(problems))


# ------------------------------------------------------------------------------------------------- the files
def _added_token(token_id: int, content: str) -> dict:
    return {"id": token_id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": True}


def tokenizer_json(vocabulary: LlamaVocabulary) -> dict:
    """``tokenizer.json`` in the serialisation tokenizers 0.19 reads and writes (see the module docstring)."""
    added = [_added_token(token_id, token) for token, token_id in SPECIAL_IDS.items()]
    added.append(_added_token(PAD_ID, PAD))
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": SPACE_PIECE},
            {"type": "Replace", "pattern": {"String": " "}, "content": SPACE_PIECE},
        ]},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": BOS, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {BOS: {"id": BOS, "ids": [SPECIAL_IDS[BOS]], "tokens": [BOS]}},
        },
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": SPACE_PIECE}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ]},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": UNK,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": {piece: token_id for token_id, piece in enumerate(vocabulary.pieces)},
            "merges": [f"{left} {right}" for left, right in vocabulary.merges],
        },
    }


def _special_token_entry(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}


def tokenizer_config() -> dict:
    """openvla-7b's ``tokenizer_config.json`` fields (docs/policy.md names the public copies)."""
    decoder = {str(token_id): {**_special_token_entry(token), "special": True}
               for token, token_id in [*SPECIAL_IDS.items(), (PAD, PAD_ID)]}
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": decoder,
        "auto_map": {"AutoProcessor": "processing_prismatic.PrismaticProcessor"},
        "bos_token": BOS,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS,
        "legacy": False,
        "model_max_length": MODEL_MAX_LENGTH,
        "pad_token": PAD,
        "padding_side": "right",
        "processor_class": "PrismaticProcessor",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": UNK,
        "use_default_system_prompt": False,
    }


def special_tokens_map() -> dict:
    return {"bos_token": _special_token_entry(BOS), "eos_token": _special_token_entry(EOS),
            "pad_token": _special_token_entry(PAD), "unk_token": _special_token_entry(UNK)}


def _json_text(data: dict) -> str:
    # transformers' save_pretrained layout: sorted keys for the configs, 2-space indent, UTF-8, final newline.
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render_tokenizer_files(vocabulary: LlamaVocabulary) -> dict[str, str]:
    """File name -> text of every file of the tokenizer directory."""
    return {
        "tokenizer.json": json.dumps(tokenizer_json(vocabulary), indent=2, ensure_ascii=False),
        "tokenizer_config.json": _json_text(tokenizer_config()),
        "special_tokens_map.json": _json_text(special_tokens_map()),
        "added_tokens.json": _json_text({PAD: PAD_ID}),
    }


def build_llama2_tokenizer(npm_tarball: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write openvla-7b's tokenizer files into ``out_dir`` from the npm tarball (see the module docstring).

    Files are written next to their final names and renamed, so an interrupted build never leaves a half-written
    file under a final name. Existing tokenizer files are replaced only with ``overwrite``.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    existing = [name for name in TOKENIZER_FILES if (out / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds {', '.join(existing)}; pass --overwrite to replace them")
    files = render_tokenizer_files(read_npm_tarball(npm_tarball))
    _check_loads(files["tokenizer.json"])
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        partial = out / f".{name}.partial"
        partial.write_text(text, encoding="utf-8")
        partial.replace(out / name)
    return out


def _check_loads(text: str) -> None:
    """The installed ``tokenizers`` must parse the file and see the ids the OpenVLA rules rely on."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(text)
    expected = {**SPECIAL_IDS, PAD: PAD_ID, SPACE_PIECE: SPACE_PIECE_ID}
    actual = {token: tokenizer.token_to_id(token) for token in expected}
    if actual != expected or tokenizer.get_vocab_size(with_added_tokens=True) != VOCAB_SIZE + 1:
        raise TokenizerBuildError(f"the written tokenizer.json maps {actual}, expected {expected}")
