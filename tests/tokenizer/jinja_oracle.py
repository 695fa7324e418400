#!/usr/bin/env python3
"""Renders chat templates with Python Jinja2 the way Hugging Face transformers does, to produce
the golden outputs that tests/tokenizer/chat_template_golden_test.cc compares against.

The environment mirrors transformers.utils.chat_template_utils._compile_jinja_template:
ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True) with the loopcontrols
extension and a no-op `{% generation %}` tag (HF's AssistantTracker), HF's own `tojson`
(json.dumps, ensure_ascii=False by default, no HTML escaping), `raise_exception` and
`strftime_now`, the latter pinned to a fixed date so that goldens are reproducible.

Usage: jinja_oracle.py TEMPLATE_DIR CASES_JSON [TEMPLATE ...]
Writes TEMPLATE_DIR/<name>.golden.json for each template (all *.jinja if none are named).

       jinja_oracle.py --snippets SNIPPETS_JSON OUT_JSON
Renders each {name, template, context} of SNIPPETS_JSON (language-feature unit cases) and
writes {name: {output} | {error, error_type}} to OUT_JSON.
"""
import datetime
import glob
import json
import os
import sys

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

FIXED_NOW = datetime.datetime(2024, 7, 26, 14, 5, 9)


class GenerationTag(jinja2.ext.Extension):
    """HF's AssistantTracker without the mask bookkeeping: `{% generation %}` renders its body."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def strftime_now(fmt):
    return FIXED_NOW.strftime(fmt)


def make_env():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def render_all(env, source, cases):
    results = {}
    try:
        tmpl = env.from_string(source)
    except Exception as e:  # a template Jinja2 cannot compile fails every case the same way
        err = {"error": str(e), "error_type": type(e).__name__}
        return {c["name"]: err for c in cases}
    for case in cases:
        try:
            results[case["name"]] = {"output": tmpl.render(**case["context"])}
        except Exception as e:
            results[case["name"]] = {"error": str(e), "error_type": type(e).__name__}
    return results


def snippets(src, dst):
    with open(src, encoding="utf-8") as f:
        items = json.load(f)
    env = make_env()
    out = {"jinja2_version": jinja2.__version__, "cases": {}}
    for it in items:
        case = {"name": it["name"], "context": it["context"]}
        out["cases"][it["name"]] = render_all(env, it["template"], [case])[it["name"]]
    with open(dst, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")


def main():
    if sys.argv[1] == "--snippets":
        return snippets(sys.argv[2], sys.argv[3])
    tdir, cases_path = sys.argv[1], sys.argv[2]
    with open(cases_path, encoding="utf-8") as f:
        cases = json.load(f)
    names = sys.argv[3:] or sorted(os.path.basename(p)[:-6] for p in glob.glob(tdir + "/*.jinja"))
    env = make_env()
    for name in names:
        with open(os.path.join(tdir, name + ".jinja"), encoding="utf-8") as f:
            source = f.read()
        res = render_all(env, source, cases)
        res = {"jinja2_version": jinja2.__version__, "cases": res}
        with open(os.path.join(tdir, name + ".golden.json"), "w", encoding="utf-8") as f:
            json.dump(res, f, ensure_ascii=False, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
