#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""The committed introspection XML (units/org.tlsgw.Gateway1.xml) against the
running daemon: every org.tlsgw.Gateway1.* interface of every object, with
the same methods, named arguments, properties and annotations; every
interface that docs/dbus-api.md names is on the bus; and the manager's
methods have exactly the arguments the API document gives them. After a
change of a vtable: scripts/dump-introspection -o units/org.tlsgw.Gateway1.xml"""

import difflib
import importlib.machinery
import importlib.util
import os
import re
import xml.etree.ElementTree as ET

from harness import (SOURCE_ROOT, Failure, Gateway, case, check, check_eq, private_bus, run)

XML = os.path.join(SOURCE_ROOT, "units", "org.tlsgw.Gateway1.xml")
API_DOC = os.path.join(SOURCE_ROOT, "docs", "dbus-api.md")
MGR = "org.tlsgw.Gateway1.Manager"


def dump_module():
        path = os.path.join(SOURCE_ROOT, "scripts", "dump-introspection")
        loader = importlib.machinery.SourceFileLoader("dump_introspection", path)
        spec = importlib.util.spec_from_loader("dump_introspection", loader)
        mod = importlib.util.module_from_spec(spec)
        loader.exec_module(mod)
        return mod


DUMP = dump_module()


def live(ctx):
        Gateway(ctx, lambda g: DUMP.introspection_config(g.state_dir, g.port), bus=True)
        return DUMP.walk(private_bus().env())


@case("units/org.tlsgw.Gateway1.xml matches the running daemon")
def _(ctx):
        check(os.path.exists(XML), f"{XML} is missing; run scripts/dump-introspection -o {XML}")
        with open(XML) as f:
                committed = DUMP.parse(f.read())
        running = DUMP.parse(DUMP.render(live(ctx)))
        problems = []
        for name in sorted(set(committed) | set(running)):
                if name not in running:
                        problems.append(f"{name}: in the XML but not on the bus")
                elif name not in committed:
                        problems.append(f"{name}: on the bus but not in the XML")
                elif committed[name] != running[name]:
                        problems.append(f"{name} differs:\n" + "\n".join(difflib.unified_diff(
                                committed[name].splitlines(), running[name].splitlines(),
                                "committed", "running", lineterm="", n=2)))
        if problems:
                raise Failure("\n".join(problems) + f"\n(regenerate: scripts/dump-introspection -o {XML})")


@case("every interface named in docs/dbus-api.md is on the bus")
def _(ctx):
        with open(API_DOC) as f:
                doc = f.read()
        named = set(re.findall(r"org\.tlsgw\.Gateway1\.([A-Z][A-Za-z]+)\b", doc))
        named.discard("Error")
        # "org.tlsgw.Gateway1.<Kind>" in the text is a pattern, not a name.
        named.discard("Kind")
        # The configuration objects are named by their short form ("...MailFlowPolicy").
        named |= set(re.findall(r"`\.\.\.([A-Z][A-Za-z]+)`", doc))
        running = set(n.rsplit(".", 1)[1] for n in live(ctx))
        missing = sorted(named - running)
        check(not missing, f"interfaces of the API document not on the bus: {missing}",
              f"on the bus: {sorted(running)}")


# docs/dbus-api.md, the Manager table: method -> (in, out) as (name, type).
MANAGER_METHODS = {
        "Reload": ([], []),
        "Add": ([("kind", "s"), ("name", "s"), ("settings", "a{sv}")], []),
        "Set": ([("kind", "s"), ("name", "s"), ("settings", "a{sv}")], []),
        "Delete": ([("kind", "s"), ("name", "s")], []),
        "SetGlobal": ([("settings", "a{sv}")], []),
        "GetPending": ([], [("pending", "b"), ("owner", "s"), ("text", "s")]),
        "GetConfig": ([("pending", "b")], [("text", "s")]),
        "Diff": ([], [("diff", "s")]),
        "Commit": ([("comment", "s")], [("version", "u")]),
        "Abandon": ([("force", "b")], []),
        "History": ([], [("history", "a(utss)")]),
        "Rollback": ([("version", "u")], [("version", "u")]),
        "ExportConfig": ([("secrets", "b"), ("password", "s")], [("text", "s")]),
        "ImportConfig": ([("text", "s"), ("password", "s")], []),
}
MANAGER_PROPERTIES = {
        "Version": "s", "State": "s", "ConfigFile": "s", "ConfigVersion": "u", "Sessions": "t",
        "QueuedMessages": "t", "ActiveDeliveries": "t", "MessagesReceived": "t", "PendingChanges": "b",
        "PendingOwner": "s", "KtlsAvailable": "b", "Listeners": "as",
}
# Marked * in the API document: PropertiesChanged carries them.
MANAGER_EMITTING = {"State", "ConfigVersion", "PendingChanges", "PendingOwner", "Listeners"}


@case("the Manager interface has the API document's methods, named arguments and properties")
def _(ctx):
        iface = live(ctx).get(MGR)
        check(iface is not None, f"{MGR} is not on the bus")
        methods = {}
        for m in iface.findall("method"):
                args = [(a.get("direction", "in"), a.get("name"), a.get("type")) for a in m.findall("arg")]
                methods[m.get("name")] = ([(n, t) for d, n, t in args if d == "in"],
                                          [(n, t) for d, n, t in args if d == "out"])
        check_eq(methods, MANAGER_METHODS, "Manager methods")
        props = {p.get("name"): p for p in iface.findall("property")}
        check_eq({n: p.get("type") for n, p in props.items()}, MANAGER_PROPERTIES, "Manager properties")
        for name in MANAGER_EMITTING:
                ann = {a.get("name"): a.get("value") for a in props[name].findall("annotation")}
                check(ann.get("org.freedesktop.DBus.Property.EmitsChangedSignal", "true") in ("true", "invalidates"),
                      f"{name} must announce its changes", ET.tostring(props[name], encoding="unicode"))
        check(all(p.get("access") == "read" for p in props.values()), "Manager properties are read-only")


if __name__ == "__main__":
        run()
