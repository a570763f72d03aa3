"""The pgtasks catalog as comparable text, and the two ways of building it side by side.

A fresh install runs the topic files in sql/schema/; an existing database is upgraded by the
numbered migrations in sql/. Both must end with the same catalog: the same tables, columns,
constraints, indexes, triggers, function definitions (body, attributes, owner, grants), views
and comments. `snapshot` reads each of these from pg_catalog as exact text, nothing
normalised away, so a difference in one line of a function body shows.

    python -m tests.catalog          # build both on a throwaway server and print the diff
    python -m tests.catalog delta    # the statements a delta migration needs (a draft: the
                                     # table changes it lists are for you to write)
"""

from __future__ import annotations

import asyncio
import difflib
import sys
import tempfile
from pathlib import Path

import asyncpg

# Each query returns one text column; its rows, sorted, are the section's content. Role
# names appear as text, so the same roles give the same ACLs in any database.
SECTIONS: dict[str, str] = {
    "schema": """
        SELECT format('owner=%s acl=%s comment=%s', pg_get_userbyid(n.nspowner),
                      (SELECT string_agg(a::text, ',' ORDER BY a::text)
                         FROM unnest(n.nspacl) a),
                      obj_description(n.oid, 'pg_namespace'))
          FROM pg_namespace n WHERE n.nspname = 'pgtasks'""",
    "types": """
        SELECT format('%s kind=%s owner=%s labels=%s comment=%s', t.typname, t.typtype,
                      pg_get_userbyid(t.typowner),
                      (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
                         FROM pg_enum e WHERE e.enumtypid = t.oid),
                      obj_description(t.oid, 'pg_type'))
          FROM pg_type t
         WHERE t.typnamespace = 'pgtasks'::regnamespace AND t.typtype IN ('e', 'd', 'c')
           AND NOT EXISTS (SELECT 1 FROM pg_class c
                            WHERE c.oid = t.typrelid AND c.relkind <> 'c')""",
    "relations": """
        SELECT format('%s kind=%s persistence=%s owner=%s options=%s rls=%s acl=%s comment=%s',
                      c.relname, c.relkind, c.relpersistence, pg_get_userbyid(c.relowner),
                      c.reloptions, c.relrowsecurity,
                      (SELECT string_agg(a::text, ',' ORDER BY a::text) FROM unnest(c.relacl) a),
                      obj_description(c.oid, 'pg_class'))
          FROM pg_class c
         WHERE c.relnamespace = 'pgtasks'::regnamespace
           AND c.relkind IN ('r', 'p', 'v', 'm', 'S')""",
    # Columns by their position among the live ones: a column dropped by an old migration
    # leaves a gap in attnum that a fresh table does not have, and no reader can see it.
    "columns": """
        SELECT format('%s.%s #%s %s notnull=%s default=%s identity=%s generated=%s '
                      'collation=%s acl=%s comment=%s',
                      c.relname, a.attname,
                      row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum),
                      format_type(a.atttypid, a.atttypmod), a.attnotnull,
                      pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated,
                      a.attcollation::regcollation,
                      (SELECT string_agg(x::text, ',' ORDER BY x::text) FROM unnest(a.attacl) x),
                      col_description(c.oid, a.attnum))
          FROM pg_class c
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
          LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
         WHERE c.relnamespace = 'pgtasks'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')""",
    "constraints": """
        SELECT format('%s %s %s validated=%s deferrable=%s comment=%s',
                      coalesce(c.conrelid::regclass::text, c.contypid::regtype::text),
                      c.conname, pg_get_constraintdef(c.oid), c.convalidated, c.condeferrable,
                      obj_description(c.oid, 'pg_constraint'))
          FROM pg_constraint c
         WHERE c.connamespace = 'pgtasks'::regnamespace""",
    "indexes": """
        SELECT format('%s valid=%s comment=%s', pg_get_indexdef(i.indexrelid), i.indisvalid,
                      obj_description(i.indexrelid, 'pg_class'))
          FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         WHERE c.relnamespace = 'pgtasks'::regnamespace""",
    "triggers": """
        SELECT format('%s enabled=%s comment=%s', pg_get_triggerdef(t.oid), t.tgenabled,
                      obj_description(t.oid, 'pg_trigger'))
          FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
         WHERE c.relnamespace = 'pgtasks'::regnamespace AND NOT t.tgisinternal""",
    "views": """
        SELECT format('%s AS %s', c.relname, pg_get_viewdef(c.oid))
          FROM pg_class c
         WHERE c.relnamespace = 'pgtasks'::regnamespace AND c.relkind IN ('v', 'm')""",
    # The whole CREATE statement: arguments, return type, language, volatility, SECURITY
    # DEFINER, every SET, and the body byte for byte.
    "functions": """
        SELECT format(E'%s owner=%s acl=%s comment=%s\n%s', p.oid::regprocedure,
                      pg_get_userbyid(p.proowner),
                      (SELECT string_agg(a::text, ',' ORDER BY a::text) FROM unnest(p.proacl) a),
                      obj_description(p.oid, 'pg_proc'), pg_get_functiondef(p.oid))
          FROM pg_proc p WHERE p.pronamespace = 'pgtasks'::regnamespace""",
    "policies": """
        SELECT format('%s %s %s %s using=%s check=%s', p.polrelid::regclass, p.polname,
                      p.polcmd, p.polroles::regrole[], pg_get_expr(p.polqual, p.polrelid),
                      pg_get_expr(p.polwithcheck, p.polrelid))
          FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
         WHERE c.relnamespace = 'pgtasks'::regnamespace""",
    "default_privileges": """
        SELECT format('%s %s %s %s', pg_get_userbyid(d.defaclrole),
                      coalesce(d.defaclnamespace::regnamespace::text, '-'), d.defaclobjtype,
                      (SELECT string_agg(a::text, ',' ORDER BY a::text) FROM unnest(d.defaclacl) a))
          FROM pg_default_acl d
         WHERE pg_get_userbyid(d.defaclrole) LIKE 'pgtasks%'""",
}


async def snapshot(conn: asyncpg.Connection) -> dict[str, list[str]]:
    """Every section's rows as sorted text. Names print qualified (pgtasks.status, not
    status) whatever the connection's search_path, so two connections compare alike."""
    async with conn.transaction(readonly=True):
        await conn.execute("SET LOCAL search_path = pg_catalog")
        return {
            name: sorted(r[0] for r in await conn.fetch(query)) for name, query in SECTIONS.items()
        }


def diff(a: dict[str, list[str]], b: dict[str, list[str]], a_name: str, b_name: str) -> str:
    """A unified diff per section that differs; empty when the catalogs are equal."""
    out: list[str] = []
    for section in SECTIONS:
        left, right = a.get(section, []), b.get(section, [])
        if left == right:
            continue
        lines = [line for row in left for line in (row + "\n").splitlines(keepends=True)]
        rights = [line for row in right for line in (row + "\n").splitlines(keepends=True)]
        out.append(f"=== {section}\n")
        out.extend(
            difflib.unified_diff(lines, rights, f"{a_name}/{section}", f"{b_name}/{section}", n=2)
        )
    return "".join(out)


async def build_both(url_of: object) -> str:
    """Build one database by migrations and one from the topic files; return their diff."""
    from pgtasks.migrations import migrate_url

    assert callable(url_of)
    admin = await asyncpg.connect(url_of("postgres"))
    snaps: dict[str, dict[str, list[str]]] = {}
    try:
        for name, fresh in (("migrated", False), ("fresh", True)):
            await admin.execute(f"DROP DATABASE IF EXISTS catalog_{name} WITH (FORCE)")
            await admin.execute(f"CREATE DATABASE catalog_{name}")
            await migrate_url(url_of(f"catalog_{name}"), fresh=fresh)
            conn = await asyncpg.connect(url_of(f"catalog_{name}"))
            try:
                snaps[name] = await snapshot(conn)
            finally:
                await conn.close()
            await admin.execute(f"DROP DATABASE catalog_{name} WITH (FORCE)")
    finally:
        await admin.close()
    return diff(snaps["migrated"], snaps["fresh"], "migrated", "fresh")


# What the delta writer reads from each database: one row per object, keyed by a name that is
# the same in both, with the statement that creates the object as the fresh build has it.
_OBJECTS: dict[str, str] = {
    "function": """
        SELECT p.oid::regprocedure::text AS key,
               CASE p.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END AS kind,
               pg_get_functiondef(p.oid) AS def,
               coalesce((SELECT string_agg(a::text, ',' ORDER BY a::text)
                           FROM unnest(p.proacl) a), '') AS acl,
               obj_description(p.oid, 'pg_proc') AS comment
          FROM pg_proc p WHERE p.pronamespace = 'pgtasks'::regnamespace""",
    "view": """
        SELECT c.oid::regclass::text AS key, 'VIEW' AS kind,
               pg_get_viewdef(c.oid) AS def,
               coalesce((SELECT string_agg(a::text, ',' ORDER BY a::text)
                           FROM unnest(c.relacl) a), '') AS acl,
               obj_description(c.oid, 'pg_class') AS comment
          FROM pg_class c
         WHERE c.relnamespace = 'pgtasks'::regnamespace AND c.relkind = 'v'""",
    "trigger": """
        SELECT format('%s ON %s', quote_ident(t.tgname), t.tgrelid::regclass) AS key,
               'TRIGGER' AS kind, pg_get_triggerdef(t.oid) AS def, '' AS acl,
               obj_description(t.oid, 'pg_trigger') AS comment
          FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
         WHERE c.relnamespace = 'pgtasks'::regnamespace AND NOT t.tgisinternal""",
    "index": """
        SELECT i.indexrelid::regclass::text AS key, 'INDEX' AS kind,
               pg_get_indexdef(i.indexrelid) AS def, '' AS acl,
               obj_description(i.indexrelid, 'pg_class') AS comment
          FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         WHERE c.relnamespace = 'pgtasks'::regnamespace
           AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)""",
    "table": """
        SELECT c.oid::regclass::text AS key, 'TABLE' AS kind, '' AS def,
               coalesce((SELECT string_agg(a::text, ',' ORDER BY a::text)
                           FROM unnest(c.relacl) a), '') AS acl,
               obj_description(c.oid, 'pg_class') AS comment
          FROM pg_class c
         WHERE c.relnamespace = 'pgtasks'::regnamespace AND c.relkind IN ('r', 'p')""",
    "column": """
        SELECT format('%s.%s', c.oid::regclass, quote_ident(a.attname)) AS key,
               'COLUMN' AS kind, format_type(a.atttypid, a.atttypmod) AS def, '' AS acl,
               col_description(c.oid, a.attnum) AS comment
          FROM pg_class c
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
         WHERE c.relnamespace = 'pgtasks'::regnamespace AND c.relkind IN ('r', 'p', 'v')""",
    "type": """
        SELECT t.oid::regtype::text AS key, 'TYPE' AS kind, '' AS def, '' AS acl,
               obj_description(t.oid, 'pg_type') AS comment
          FROM pg_type t
         WHERE t.typnamespace = 'pgtasks'::regnamespace AND t.typtype IN ('e', 'd', 'c')
           AND NOT EXISTS (SELECT 1 FROM pg_class c
                            WHERE c.oid = t.typrelid AND c.relkind <> 'c')""",
}

Objects = dict[str, dict[str, asyncpg.Record]]


async def objects(conn: asyncpg.Connection) -> Objects:
    async with conn.transaction(readonly=True):
        await conn.execute("SET LOCAL search_path = pg_catalog")
        return {
            what: {r["key"]: r for r in await conn.fetch(query)} for what, query in _OBJECTS.items()
        }


def _acl_statements(kind: str, key: str, old_acl: str, new_acl: str) -> list[str]:
    """GRANT and REVOKE that turn one ACL into the other (owner entries aside)."""

    def parse(acl: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in filter(None, acl.split(",")):
            grantee, rest = item.split("=", 1)
            out[grantee or "PUBLIC"] = rest.split("/", 1)[0]
        return out

    privilege = {"FUNCTION": "EXECUTE", "PROCEDURE": "EXECUTE"}.get(kind, "SELECT")
    target = {"VIEW": "TABLE"}.get(kind, kind)
    old, new = parse(old_acl), parse(new_acl)
    stmts = []
    for grantee in sorted(set(old) | set(new)):
        if grantee == "pgtasks_owner" or old.get(grantee) == new.get(grantee):
            continue
        if grantee in old:
            stmts.append(f"REVOKE ALL ON {target} {key} FROM {grantee};")
        if grantee in new:
            stmts.append(f"GRANT {privilege} ON {target} {key} TO {grantee};")
    return stmts


def _comment(kind: str, key: str, text: str | None) -> str:
    literal = "NULL" if text is None else "'" + text.replace("'", "''") + "'"
    return f"COMMENT ON {kind} {key} IS {literal};"


def write_delta(old: Objects, new: Objects) -> str:
    """The statements that bring the old catalog's functions, views, triggers, indexes,
    grants and comments to the new one. Tables and columns that differ are listed as
    comments: their DDL (and how to fill a new column) has to be written by hand."""
    head = [
        "SET LOCAL search_path = pg_catalog, pgtasks, pg_temp;",
        "-- Bodies are checked when they first run, so a function may call one defined below.",
        "SET LOCAL check_function_bodies = off;",
        "-- Created by, and so owned by, pgtasks_owner.",
        "SET LOCAL ROLE pgtasks_owner;",
        "",
    ]
    drops: list[str] = []
    creates: list[str] = []
    todo: list[str] = []
    for what in ("trigger", "view", "function", "index"):
        for key in sorted(set(old[what]) - set(new[what])):
            drops.append(f"DROP {old[what][key]['kind']} {key};")
    for what in ("table", "column", "type"):
        for key in sorted(set(old[what]) ^ set(new[what])):
            side = "only in the old catalog" if key in old[what] else "new"
            todo.append(f"-- hand-write: {what} {key} ({side})")
        for key in sorted(set(old[what]) & set(new[what])):
            if old[what][key]["def"] != new[what][key]["def"]:
                todo.append(f"-- hand-write: {what} {key} changed")
    for what in ("function", "view", "index", "trigger"):
        for key in sorted(new[what]):
            n, o = new[what][key], old[what].get(key)
            if o is not None and o["def"] == n["def"]:
                continue
            if what == "function":
                creates.append(n["def"].rstrip() + ";")
            elif what == "view":
                creates.append(f"CREATE OR REPLACE VIEW {key} AS\n{n['def'].rstrip().rstrip(';')};")
            else:
                if o is not None:
                    creates.append(f"DROP {n['kind']} {key};")
                creates.append(n["def"] + ";")
    for what in _OBJECTS:
        for key in sorted(new[what]):
            n, o = new[what][key], old[what].get(key)
            creates.extend(_acl_statements(n["kind"], key, o["acl"] if o else "", n["acl"]))
            if (o["comment"] if o else None) != n["comment"]:
                creates.append(_comment(n["kind"], key, n["comment"]))
    body = todo + ([""] if todo else []) + drops + ([""] if drops else []) + creates
    return "\n".join(head + body) + "\n"


async def build_delta(url_of: object) -> str:
    """The delta from the numbered migrations' catalog to the topic files' one."""
    from pgtasks.migrations import migrate_url

    assert callable(url_of)
    admin = await asyncpg.connect(url_of("postgres"))
    got: dict[str, Objects] = {}
    try:
        for name, fresh in (("old", False), ("new", True)):
            await admin.execute(f"DROP DATABASE IF EXISTS delta_{name} WITH (FORCE)")
            await admin.execute(f"CREATE DATABASE delta_{name}")
            await migrate_url(url_of(f"delta_{name}"), fresh=fresh)
            conn = await asyncpg.connect(url_of(f"delta_{name}"))
            try:
                got[name] = await objects(conn)
            finally:
                await conn.close()
            await admin.execute(f"DROP DATABASE delta_{name} WITH (FORCE)")
    finally:
        await admin.close()
    return write_delta(got["old"], got["new"])


def main() -> None:
    from pgtasks.embedded import EmbeddedPostgres

    delta = sys.argv[1:] == ["delta"]
    with tempfile.TemporaryDirectory(prefix="pgtasks-catalog-") as tmp:
        server = EmbeddedPostgres(Path(tmp))
        server.start()
        try:
            out = asyncio.run((build_delta if delta else build_both)(server.url))
        finally:
            server.destroy()
    if delta:
        sys.stdout.write(out)
        return
    sys.stdout.write(out or "the catalogs are equal\n")
    sys.exit(1 if out else 0)


if __name__ == "__main__":
    main()
