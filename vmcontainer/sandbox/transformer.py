"""The task compiler's AST transformer: RestrictedPython's checks, our policy, our speed.

``TaskTransformer`` subclasses RestrictedPython's ``RestrictingNodeTransformer``
so every name check, the ``except*`` / ``match`` / async bans and the
reject-unknown-nodes default stay in force.  On top of it, one ``visit_*`` per
node we decide differently:

* attribute loads with a static name are plain unless the name is guarded
  (``policy.GUARDED_ATTRIBUTES``); denied names are compile errors;
* attribute writes go through ``_vm_write_`` (only the script's own classes and
  instances are writable); subscripts, iteration and unpacking are plain -
  everything a script can reach is its own data or an immutable facade;
* ordinary engineer code that stock RestrictedPython rejects is allowed:
  augmented assignment on items and attributes, annotated assignment,
  ``nonlocal``; a bare ``except:`` becomes ``except Exception:`` so the
  container's interrupt cannot be swallowed;
* imports are checked against the module allowlist at compile time;
* deadline checkpoints go at every function entry, loop body and
  comprehension filter: ``if _vm_stop_: _vm_expired_()``.  Reading a flag
  costs a tenth of reading the clock; the deadline watch raises it ahead of
  the deadline, and from then on the slow path reads the clock at every
  checkpoint, so a timeout still lands within one checkpoint of the deadline.
"""

from __future__ import annotations

import ast
import copy

from RestrictedPython.transformer import RestrictingNodeTransformer, copy_locations

from ..errors import Diagnostic
from . import policy


def _name(id_: str) -> ast.Name:
    return ast.Name(id=id_, ctx=ast.Load())


def _call(func: str, *args: ast.expr) -> ast.Call:
    return ast.Call(func=_name(func), args=list(args), keywords=[])


def _locate(node: ast.AST, at: ast.AST) -> None:
    """Give a generated subtree the source position of ``at`` (for tracebacks)."""
    for sub in ast.walk(node):
        if "lineno" in sub._attributes:
            copy_locations(sub, at)


def checkpoint_stmt(at: ast.AST) -> ast.If:
    """``if _vm_stop_: _vm_expired_()``, located at ``at``."""
    stmt = ast.If(test=_name(policy.STOP), body=[ast.Expr(_call(policy.EXPIRED))], orelse=[])
    _locate(stmt, at)
    return stmt


def checkpoint_expr(at: ast.AST) -> ast.expr:
    """An always-true comprehension filter that checks the deadline.

    ``_vm_expired_()`` returns None when it only audited or parked, so the
    trailing ``or True`` keeps the element: the filter must never drop one.
    """
    # (not _vm_stop_ or _vm_expired_() or True)
    expr = ast.BoolOp(
        op=ast.Or(),
        values=[
            ast.UnaryOp(op=ast.Not(), operand=_name(policy.STOP)),
            _call(policy.EXPIRED),
            ast.Constant(True),
        ],
    )
    _locate(expr, at)
    return expr


def _is_super_call(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "super"
    )


_OP_NAMES = {ast.Mult: "*", ast.Pow: "**", ast.LShift: "<<"}


def _side_effect_free(node: ast.AST) -> bool:
    """Re-reading this target runs no script code: names, constants, subscripts and
    attribute loads of those (``self.counts[k]``), nothing called."""
    if isinstance(node, (ast.Name, ast.Constant)):
        return True
    if isinstance(node, ast.Attribute):
        return _side_effect_free(node.value)
    if isinstance(node, ast.Subscript):
        return _side_effect_free(node.value) and _side_effect_free(node.slice)
    return False


class _ToLoad(ast.NodeTransformer):
    def visit_Name(self, node: ast.Name) -> ast.Name:
        return ast.Name(id=node.id, ctx=ast.Load())

    def visit_Attribute(self, node: ast.Attribute) -> ast.Attribute:
        return ast.Attribute(value=self.visit(node.value), attr=node.attr, ctx=ast.Load())

    def visit_Subscript(self, node: ast.Subscript) -> ast.Subscript:
        return ast.Subscript(value=self.visit(node.value), slice=self.visit(node.slice), ctx=ast.Load())


def _as_load(target: ast.expr) -> ast.expr:
    load = _ToLoad().visit(copy.deepcopy(target))
    ast.copy_location(load, target)
    ast.fix_missing_locations(load)
    return load


def _growth_op(op: ast.operator) -> bool:
    return type(op) in _OP_NAMES


def _small_constant(node: ast.AST) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        node = node.operand
    return (
        isinstance(node, ast.Constant)
        and type(node.value) in (int, float)
        and abs(node.value) <= policy.SMALL_CONSTANT
    )


def _module_allowed(name: str) -> bool:
    return name in policy.ALLOWED_MODULES or name in {"numpy.linalg", "numpy.random"}


class TaskTransformer(RestrictingNodeTransformer):
    """RestrictedPython's transformer with the vmcontainer policy applied."""

    def __init__(self, filename: str) -> None:
        super().__init__(errors=[], warnings=[], used_names={})
        self.filename = filename
        self.diagnostics: list[Diagnostic] = []

    # -- diagnostics ---------------------------------------------------------

    def error(self, node: ast.AST, info: str) -> None:
        line = getattr(node, "lineno", 0) or 0
        col = (getattr(node, "col_offset", 0) or 0) + 1
        self.diagnostics.append(Diagnostic(self.filename, line, col, info))
        self.errors.append(f"Line {line}: {info}")

    # -- print is a plain (captured, capped) builtin, not RP's collector ------

    def inject_print_collector(self, node, position=0):  # type: ignore[no-untyped-def]
        return None

    def visit_Name(self, node: ast.Name) -> ast.AST:
        node = self.node_contents_visit(node)
        if isinstance(node.ctx, ast.Load) and node.id in ("print", "printed"):
            if node.id == "printed":
                self.error(node, '"printed" is not supported; print output is captured by the container')
            return node
        self.check_name(node, node.id)
        return node

    # -- attributes ----------------------------------------------------------

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        attr = node.attr
        if attr == "__init__" and _is_super_call(node.value):
            pass  # super().__init__(...): the parent's initializer on the script's own object
        elif attr.startswith("_") and attr != "_":
            self.error(node, f'"{attr}" is an invalid attribute name because it starts with "_".')
        elif attr.endswith("__roles__"):
            self.error(node, f'"{attr}" is an invalid attribute name.')
        elif attr in policy.DENIED_ATTRIBUTES:
            self.error(node, f'attribute "{attr}" is not available in the sandbox.')
        node = self.node_contents_visit(node)
        if isinstance(node.ctx, ast.Load):
            if attr in policy.GUARDED_ATTRIBUTES:
                guarded = _call(policy.GETATTR, node.value, ast.Constant(attr))
                for sub in (guarded, guarded.func, guarded.args[1]):
                    copy_locations(sub, node)
                return guarded
            return node
        wrapped: ast.expr = _call(policy.WRITE, node.value)
        if isinstance(node.value, ast.Name):
            # self.x = v  ->  (self if _vm_type_(self) in _vm_classes_ else _vm_write_(self)).x = v
            # The common case (an instance of the script's own class) is decided in C;
            # everything else still goes through the guard.
            wrapped = ast.IfExp(
                test=ast.Compare(
                    left=_call(policy.TYPE, _name(node.value.id)),
                    ops=[ast.In()],
                    comparators=[_name(policy.CLASSES)],
                ),
                body=_name(node.value.id),
                orelse=wrapped,
            )
        _locate(wrapped, node.value)
        node.value = wrapped
        return node

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        return self.node_contents_visit(node)

    # -- arithmetic that can allocate without bound -----------------------------

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        node = self.node_contents_visit(node)
        if (isinstance(node.op, ast.Mod) and isinstance(node.left, ast.Constant)
                and type(node.left.value) in (str, bytes)):
            # "literal %10d" % args: widths are sizes to allocate (numeric % stays plain)
            guarded_fmt = _call(policy.PERCENT, node.left, node.right)
            _locate(guarded_fmt, node)
            return guarded_fmt
        if _growth_op(node.op) and not _small_constant(node.right) and not (
            isinstance(node.op, ast.Mult) and _small_constant(node.left)
        ):
            guarded: ast.expr = _call(policy.ARITH, ast.Constant(_OP_NAMES[type(node.op)]),
                                      node.left, node.right)
            names = [n for n in (node.left, node.right) if isinstance(n, ast.Name)]
            if len(names) == 2:
                # x * y on two names: nothing runs between the test and the operation,
                # so a float operand (fixed-size result) skips the guard call.
                guarded = ast.IfExp(
                    test=ast.BoolOp(op=ast.Or(), values=[
                        ast.Compare(left=_call(policy.TYPE, _name(n.id)), ops=[ast.Is()],
                                    comparators=[_name(policy.FLOAT)])
                        for n in names
                    ]),
                    body=ast.BinOp(left=_name(names[0].id), op=node.op, right=_name(names[1].id)),
                    orelse=guarded,
                )
            _locate(guarded, node)
            return guarded
        return node

    def visit_FormattedValue(self, node: ast.FormattedValue) -> ast.AST:
        """``f"{x:>{n}}"``, ``f"{x!r}"``: a spec's width is a size to allocate and ``!r``
        would show addresses, so such a field is formatted by ``_vm_format_``.  A bare
        ``f"{x}"`` (the common case) stays a plain ``str(x)``."""
        node = self.node_contents_visit(node)
        if node.conversion == -1 and node.format_spec is None:
            return node
        spec = node.format_spec if node.format_spec is not None else ast.Constant("")
        field = ast.FormattedValue(
            value=_call(policy.FORMAT, node.value, ast.Constant(node.conversion), spec),
            conversion=-1, format_spec=None)
        _locate(field, node)
        return field

    # -- assignment ----------------------------------------------------------

    def visit_Assign(self, node: ast.Assign) -> ast.AST:
        return self.node_contents_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.AST:
        guarded_item = (_growth_op(node.op) and not _small_constant(node.value)
                        and isinstance(node.target, (ast.Subscript, ast.Attribute)))
        if guarded_item:
            if not _side_effect_free(node.target):
                self.error(node, "augmented assignment with *, ** or << on this target: "
                                 "assign the value to a local name first")
                return node
            current = self.visit(_as_load(node.target))
        # The target's own visit wraps attribute targets in _vm_write_.
        node = self.node_contents_visit(node)
        if guarded_item:
            # d[k] *= n  ->  d[k] *= _vm_aug_("*", d[k], n): the size check sees the
            # current value; the target is re-read only when reading it runs no code.
            node.value = _call(policy.AUG, ast.Constant(_OP_NAMES[type(node.op)]), current, node.value)
            _locate(node.value, node)
            return node
        if _growth_op(node.op) and not _small_constant(node.value) and isinstance(node.target, ast.Name):
            # n *= k  ->  n = _vm_arith_("*", n, k): same result, size checked first
            assign = ast.Assign(
                targets=[node.target],
                value=_call(policy.ARITH, ast.Constant(_OP_NAMES[type(node.op)]),
                            ast.Name(id=node.target.id, ctx=ast.Load()), node.value),
            )
            _locate(assign, node)
            return assign
        return node

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        return self.node_contents_visit(node)

    def visit_Nonlocal(self, node: ast.Nonlocal) -> ast.AST:
        for name in node.names:
            self.check_name(node, name)
        return self.node_contents_visit(node)

    def visit_Global(self, node: ast.Global) -> ast.AST:
        for name in node.names:
            self.check_name(node, name)
        return self.node_contents_visit(node)

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if isinstance(node.func, ast.Name) and node.func.id in ("exec", "eval"):
            self.error(node, f"{node.func.id}() is not available in the sandbox.")
        return self.node_contents_visit(node)

    # -- loops and functions get deadline checkpoints -------------------------

    def guard_iter(self, node):  # type: ignore[no-untyped-def]
        node = self.node_contents_visit(node)
        if isinstance(node, ast.comprehension):
            node.ifs.insert(0, checkpoint_expr(node.iter))
        else:
            node.body.insert(0, checkpoint_stmt(node))
        return node

    def visit_While(self, node: ast.While) -> ast.AST:
        node = self.node_contents_visit(node)
        node.body.insert(0, checkpoint_stmt(node))
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        node = super().visit_FunctionDef(node)
        body = node.body
        has_doc = (
            body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        )
        body.insert(1 if has_doc else 0, checkpoint_stmt(node))
        return node

    def visit_With(self, node: ast.With) -> ast.AST:
        return self.node_contents_visit(node)  # plain unpacking, as everywhere else

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        """A checkpoint in every lambda: C code can drive one forever
        (``functools.reduce(f, iter(int, 1))``) without any loop of the script's."""
        node = super().visit_Lambda(node)
        body = ast.Subscript(
            value=ast.Tuple(elts=[checkpoint_expr(node.body), node.body], ctx=ast.Load()),
            slice=ast.Constant(1),
            ctx=ast.Load(),
        )
        _locate(body.value, node.body)
        _locate(body, node.body)
        node.body = body
        return node

    # -- exceptions ----------------------------------------------------------

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> ast.AST:
        node = self.node_contents_visit(node)
        self.check_name(node, node.name)
        if node.type is None:
            node.type = _name("Exception")
            _locate(node.type, node)
        return node

    # -- imports -------------------------------------------------------------

    def visit_Import(self, node: ast.Import) -> ast.AST:
        for alias in node.names:
            if not _module_allowed(alias.name):
                self.error(node, f'import of "{alias.name}" is not allowed (allowed: '
                           f'{", ".join(sorted(policy.ALLOWED_MODULES))}).')
        return self.check_import_names(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> ast.AST:
        if node.level:
            self.error(node, "relative imports are not allowed.")
        elif not _module_allowed(node.module or ""):
            self.error(node, f'import from "{node.module}" is not allowed.')
        return self.check_import_names(node)

    # -- classes -------------------------------------------------------------

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        """Route class creation through ``__metaclass__`` so the runtime knows the
        script's own classes (only those are writable)."""
        self.check_name(node, node.name)
        node = self.node_contents_visit(node)
        if any(k.arg == "metaclass" for k in node.keywords):
            self.error(node, 'The keyword argument "metaclass" is not allowed.')
        meta = ast.keyword(arg="metaclass", value=_name(policy.METACLASS))
        _locate(meta, node)
        node.keywords.append(meta)
        return node
