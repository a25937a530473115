//! Proves that `include/plughost/plugin_api.h` and this crate describe the same ABI
//! (`PLUGIN_ABI.md`, "Types", "Status codes", "Hooks", "API", "Entry point").
//!
//! One table (`abi_structs!` below) lists every struct of the contract with its fields in order
//! and the type of each field. From it:
//! - at compile time, for the Rust mirror: each struct has exactly these fields (an exhaustive
//!   destructuring) and each field has exactly this type;
//! - in a generated C program compiled with `-Werror`: each struct has exactly this many fields (a
//!   positional initializer: too many is an error, too few is `-Wmissing-field-initializers`) and
//!   each field has exactly this type (a pointer assignment: `-Wincompatible-pointer-types`);
//! - at run time: the C program prints `sizeof`, `_Alignof`, every `offsetof` and every field's
//!   size, and the test compares them with `size_of`, `align_of` and `offset_of!` of the Rust
//!   types.
//!
//! The same program checks the value and C type of every constant, the typedefs, and the
//! `PLUGHOST_REQUIRE_VERSION` comparison against `plughost_abi::version_at_least`. Further tests
//! build the header as C++ and build plugins (including the header's own example) as shared objects
//! that export the entry point.
//!
//! The C compiler is `cc` (or `$CC`), the C++ compiler `c++` (or `$CXX`). Without a C compiler the
//! tests fail: checking the header against a compiler is their whole point. Without a C++ compiler
//! or `nm` the corresponding check is skipped with a printed reason.

use std::collections::HashMap;
use std::ffi::{c_char, c_int};
use std::fmt::Write as _;
use std::io;
use std::mem::{align_of, offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use plughost_abi as abi;

// ------------------------------------------------------------------------------------------------
// Type tokens: one name per C type of the contract, spelled in Rust (`rust_ty!`) and in C
// (`c_decl!`: a declaration with `@` where the declared name goes, so that arrays and function
// pointers work).
// ------------------------------------------------------------------------------------------------

macro_rules! rust_ty {
    (u8x16) => { [u8; 16] };
    (u32) => { u32 };
    (u64) => { u64 };
    (bool) => { bool };
    (cstr) => { *const c_char };
    (argv) => { *const *const c_char };
    (int_out) => { *mut c_int };
    (version) => { abi::plughost_version };
    (uuid) => { abi::plughost_uuid };
    (uuid_ptr) => { *const abi::plughost_uuid };
    (session_id) => { abi::plughost_session_id };
    (container_session_id) => { abi::plughost_container_session_id };
    (session_ptr) => { *const abi::plughost_session };
    (vm_settings_ptr) => { *const abi::plughost_vm_settings };
    (distribution_ptr) => { *const abi::plughost_distribution };
    (offline_distribution_ptr) => { *const abi::plughost_offline_distribution };
    (container_session_ptr) => { *const abi::plughost_container_session };
    (process) => { *mut abi::plughost_process };
    (process_out) => { *mut *mut abi::plughost_process };
    (process_fd) => { abi::plughost_process_fd };
    (status) => { abi::plughost_status };
    (void) => { () };
    // A hook: NULL when the plugin does not set it.
    ((hook($($arg:tt),*))) => {
        Option<unsafe extern "C" fn($(rust_ty!($arg)),*) -> abi::plughost_status>
    };
    // An API function: never NULL.
    ((api($($arg:tt),*) -> void)) => { unsafe extern "C" fn($(rust_ty!($arg)),*) };
    ((api($($arg:tt),*) -> $ret:tt)) => {
        unsafe extern "C" fn($(rust_ty!($arg)),*) -> rust_ty!($ret)
    };
}

macro_rules! c_decl {
    (u8x16) => { String::from("uint8_t @[16]") };
    (u32) => { String::from("uint32_t @") };
    (u64) => { String::from("uint64_t @") };
    (bool) => { String::from("bool @") };
    (cstr) => { String::from("const char *@") };
    (argv) => { String::from("const char *const *@") };
    (int_out) => { String::from("int *@") };
    (version) => { String::from("struct plughost_version @") };
    (uuid) => { String::from("struct plughost_uuid @") };
    (uuid_ptr) => { String::from("const struct plughost_uuid *@") };
    (session_id) => { String::from("plughost_session_id @") };
    (container_session_id) => { String::from("plughost_container_session_id @") };
    (session_ptr) => { String::from("const struct plughost_session *@") };
    (vm_settings_ptr) => { String::from("const struct plughost_vm_settings *@") };
    (distribution_ptr) => { String::from("const struct plughost_distribution *@") };
    (offline_distribution_ptr) => { String::from("const struct plughost_offline_distribution *@") };
    (container_session_ptr) => { String::from("const struct plughost_container_session *@") };
    (process) => { String::from("plughost_process *@") };
    (process_out) => { String::from("plughost_process **@") };
    (process_fd) => { String::from("enum plughost_process_fd @") };
    (status) => { String::from("plughost_status @") };
    (void) => { String::from("void @") };
    ((hook($($arg:tt),*))) => { c_fn_decl(c_decl!(status), &[$(c_decl!($arg)),*]) };
    ((api($($arg:tt),*) -> $ret:tt)) => { c_fn_decl(c_decl!($ret), &[$(c_decl!($arg)),*]) };
}

/// A field's zero value in a positional C initializer.
macro_rules! c_zero {
    (u8x16) => {
        "{0}"
    };
    (version) => {
        "{0}"
    };
    (uuid) => {
        "{{0}}"
    };
    ($other:tt) => {
        "0"
    };
}

/// `ret @(args)` turned into a pointer-to-function declaration: `ret (*@)(args)`.
fn c_fn_decl(ret: String, args: &[String]) -> String {
    let args: Vec<String> = args.iter().map(|arg| arg.replace('@', "")).collect();
    ret.replace('@', &format!("(*@)({})", args.join(", ")))
}

// ------------------------------------------------------------------------------------------------
// The table.
// ------------------------------------------------------------------------------------------------

struct StructSpec {
    name: &'static str,
    size: usize,
    align: usize,
    fields: Vec<FieldSpec>,
}

struct FieldSpec {
    name: &'static str,
    offset: usize,
    size: usize,
    /// C declaration of the field's type, `@` standing for the name.
    c_decl: String,
    c_zero: &'static str,
}

macro_rules! abi_structs {
    ($( $s:ident { $( $f:ident : $k:tt ),* $(,)? } )*) => {
        fn abi_structs() -> Vec<StructSpec> {
            vec![$(
                StructSpec {
                    name: stringify!($s),
                    size: size_of::<abi::$s>(),
                    align: align_of::<abi::$s>(),
                    fields: vec![$(
                        FieldSpec {
                            name: stringify!($f),
                            offset: offset_of!(abi::$s, $f),
                            size: size_of::<rust_ty!($k)>(),
                            c_decl: c_decl!($k),
                            c_zero: c_zero!($k),
                        }
                    ),*],
                }
            ),*]
        }

        // The Rust half, checked by the compiler: exactly these fields, each of exactly this type.
        $(
            const _: () = {
                #[allow(dead_code)]
                fn has_exactly_the_listed_fields(value: abi::$s) {
                    let abi::$s { $( $f: _ ),* } = value;
                }
                $(
                    #[allow(dead_code)]
                    fn $f(value: &abi::$s) -> &rust_ty!($k) {
                        &value.$f
                    }
                )*
            };
        )*
    };
}

abi_structs! {
    plughost_version { major: u32, minor: u32, revision: u32 }
    plughost_uuid { bytes: u8x16 }
    plughost_session { id: session_id, uid: u32, gid: u32, user_name: cstr }
    plughost_vm_settings { flags: u32 }
    plughost_distribution {
        id: uuid,
        name: cstr,
        pid_namespace: u64,
        package: cstr,
        init_pid: u32,
        flavor: cstr,
        version: cstr,
    }
    plughost_offline_distribution {
        id: uuid,
        name: cstr,
        package: cstr,
        flavor: cstr,
        version: cstr,
    }
    plughost_container_session {
        id: container_session_id,
        display_name: cstr,
        application_pid: u32,
        uid: u32,
        gid: u32,
    }
    plughost_hooks_v1 {
        on_vm_started: (hook(session_ptr, vm_settings_ptr)),
        on_vm_stopping: (hook(session_ptr)),
        on_distribution_started: (hook(session_ptr, distribution_ptr)),
        on_distribution_stopping: (hook(session_ptr, distribution_ptr)),
        on_distribution_registered: (hook(session_ptr, offline_distribution_ptr)),
        on_distribution_unregistered: (hook(session_ptr, offline_distribution_ptr)),
        on_container_session_created: (hook(container_session_ptr)),
        on_container_session_stopping: (hook(container_session_ptr)),
        on_session_vm_started: (hook(container_session_ptr)),
        on_session_vm_stopping: (hook(container_session_ptr)),
    }
    plughost_api_v1 {
        version: version,
        mount_folder: (api(session_id, cstr, cstr, bool, cstr) -> status),
        execute_binary: (api(session_id, cstr, argv, int_out) -> status),
        plugin_error: (api(cstr) -> status),
        execute_binary_in_distribution: (api(session_id, uuid_ptr, cstr, argv, int_out) -> status),
        container_mount_folder: (api(container_session_id, cstr, cstr, bool) -> status),
        container_unmount_folder: (api(container_session_id, cstr) -> status),
        container_create_process:
            (api(container_session_id, cstr, argv, argv, process_out, int_out) -> status),
        process_get_fd: (api(process, process_fd, int_out) -> status),
        process_get_exit_fd: (api(process, int_out) -> status),
        process_get_exit_code: (api(process, int_out) -> status),
        process_release: (api(process) -> void),
    }
}

/// The typedefs of the contract, checked against their spec type in Rust here and in C by
/// [`typedef_checks`].
#[allow(dead_code)]
fn rust_typedefs_have_spec_types(
    status: abi::plughost_status,
    session: abi::plughost_session_id,
    container_session: abi::plughost_container_session_id,
    process_fd: abi::plughost_process_fd,
    entry: abi::plughost_plugin_entry_v1_fn,
) -> (
    i32,
    u32,
    u32,
    c_int,
    unsafe extern "C" fn(*const abi::plughost_api_v1, *mut abi::plughost_hooks_v1) -> i32,
) {
    (status, session, container_session, process_fd, entry)
}

/// C statements checking the same typedefs (incompatible pointer types are errors under `-Werror`).
fn typedef_checks() -> String {
    [
        ("plughost_status", "int32_t"),
        ("plughost_session_id", "uint32_t"),
        ("plughost_container_session_id", "uint32_t"),
        ("plughost_process", "struct plughost_process"),
    ]
    .iter()
    .map(|(typedef, spec)| format!("    {{ {typedef} *a = 0; {spec} *b = a; (void)b; }}\n"))
    .chain(std::iter::once(
        "    { plughost_plugin_entry_v1_fn a = 0; \
         plughost_status (*b)(const struct plughost_api_v1 *, struct plughost_hooks_v1 *) = a; \
         (void)b; }\n"
            .to_string(),
    ))
    .collect()
}

struct ConstSpec {
    name: &'static str,
    value: i64,
    /// The C type the macro or enumerator must have.
    c_type: &'static str,
}

macro_rules! abi_consts {
    ($( $name:ident : $c_type:literal ),* $(,)?) => {
        vec![$(
            ConstSpec { name: stringify!($name), value: i64::from(abi::$name), c_type: $c_type }
        ),*]
    };
}

fn abi_consts() -> Vec<ConstSpec> {
    abi_consts! {
        PLUGHOST_OK: "int32_t",
        PLUGHOST_E_REQUIRES_UPDATE: "int32_t",
        PLUGHOST_E_ILLEGAL_CALL: "int32_t",
        PLUGHOST_E_ILLEGAL_STATE: "int32_t",
        PLUGHOST_E_NOT_RUNNING: "int32_t",
        PLUGHOST_E_NOT_FOUND: "int32_t",
        PLUGHOST_E_SHUTTING_DOWN: "int32_t",
        PLUGHOST_E_HOST_CRASHED: "int32_t",
        PLUGHOST_VM_CUSTOM_KERNEL: "unsigned int",
        PLUGHOST_VM_CUSTOM_KERNEL_CMDLINE: "unsigned int",
        PLUGHOST_PROCESS_STDIN: "int",
        PLUGHOST_PROCESS_STDOUT: "int",
        PLUGHOST_PROCESS_STDERR: "int",
    }
}

/// Scalar types whose size C and Rust must agree on.
fn abi_scalar_sizes() -> Vec<(&'static str, usize)> {
    vec![
        ("plughost_status", size_of::<abi::plughost_status>()),
        ("plughost_session_id", size_of::<abi::plughost_session_id>()),
        (
            "plughost_container_session_id",
            size_of::<abi::plughost_container_session_id>(),
        ),
        (
            "enum plughost_process_fd",
            size_of::<abi::plughost_process_fd>(),
        ),
        (
            "plughost_process *",
            size_of::<*mut abi::plughost_process>(),
        ),
        (
            "plughost_plugin_entry_v1_fn",
            size_of::<abi::plughost_plugin_entry_v1_fn>(),
        ),
        ("bool", size_of::<bool>()),
    ]
}

/// Version components for the `PLUGHOST_REQUIRE_VERSION` cross-check; `0x80000000` catches a signed
/// comparison.
const VERSION_COMPONENTS: [u32; 3] = [0, 1, 0x8000_0000];

// ------------------------------------------------------------------------------------------------
// The generated C program.
// ------------------------------------------------------------------------------------------------

fn layout_program(structs: &[StructSpec], consts: &[ConstSpec]) -> String {
    let mut c = String::from(
        "#include <stddef.h>\n#include <stdio.h>\n#include <plughost/plugin_api.h>\n\n\
         #define PH_STR2(x) #x\n#define PH_STR(x) PH_STR2(x)\n\n",
    );
    for s in structs {
        let zeros: Vec<&str> = s.fields.iter().map(|f| f.c_zero).collect();
        let _ = writeln!(c, "static void check_{}(void)\n{{", s.name);
        let _ = writeln!(
            c,
            "    /* exactly {} fields */\n    struct {} value = {{{}}};",
            s.fields.len(),
            s.name,
            zeros.join(", ")
        );
        for f in &s.fields {
            let decl = f.c_decl.replace('@', "(*p)");
            let _ = writeln!(c, "    {{ {decl} = &value.{}; (void)p; }}", f.name);
        }
        c.push_str("    (void)value;\n}\n\n");
    }
    c.push_str("static void check_typedefs(void)\n{\n");
    c.push_str(&typedef_checks());
    c.push_str("}\n\n");
    for k in consts {
        let _ = writeln!(
            c,
            "_Static_assert(_Generic(({0}), {1}: 1, default: 0), \"{0} has type {1}\");",
            k.name, k.c_type
        );
    }
    c.push_str(
        "\nstatic plughost_status require(const struct plughost_api_v1 *api, uint32_t major,\n\
         \x20                              uint32_t minor, uint32_t revision)\n{\n\
         \x20   PLUGHOST_REQUIRE_VERSION(major, minor, revision, api);\n\
         \x20   return PLUGHOST_OK;\n}\n\n",
    );

    c.push_str("int main(void)\n{\n    check_typedefs();\n");
    for s in structs {
        let n = s.name;
        let _ = writeln!(c, "    check_{n}();");
        let _ = writeln!(
            c,
            "    printf(\"sizeof {n}\\t%zu\\n\", sizeof(struct {n}));"
        );
        let _ = writeln!(
            c,
            "    printf(\"alignof {n}\\t%zu\\n\", _Alignof(struct {n}));"
        );
        for f in &s.fields {
            let fname = f.name;
            let _ = writeln!(
                c,
                "    printf(\"offsetof {n}.{fname}\\t%zu\\n\", offsetof(struct {n}, {fname}));"
            );
            let _ = writeln!(
                c,
                "    printf(\"sizeof {n}.{fname}\\t%zu\\n\", sizeof(((struct {n} *)0)->{fname}));"
            );
        }
    }
    for (name, _) in abi_scalar_sizes() {
        let _ = writeln!(c, "    printf(\"sizeof {name}\\t%zu\\n\", sizeof({name}));");
    }
    for k in consts {
        let _ = writeln!(
            c,
            "    printf(\"value {0}\\t%lld\\n\", (long long)({0}));",
            k.name
        );
    }
    c.push_str("    printf(\"entry point symbol\\t%s\\n\", PH_STR(PLUGHOST_ENTRY_POINT_V1));\n");
    let components: Vec<String> = VERSION_COMPONENTS.iter().map(|v| format!("{v}u")).collect();
    let _ = write!(
        c,
        r#"
    static const uint32_t components[] = {{{}}};
    const size_t n = sizeof components / sizeof components[0];
    struct plughost_api_v1 api = {{0}};
    for (size_t i = 0; i < n * n * n * n * n * n; i++) {{
        size_t k = i;
        uint32_t v[6];
        for (int j = 0; j < 6; j++) {{
            v[j] = components[k % n];
            k /= n;
        }}
        api.version.major = v[0];
        api.version.minor = v[1];
        api.version.revision = v[2];
        printf("version %u.%u.%u>=%u.%u.%u\t%d %d\n", v[0], v[1], v[2], v[3], v[4], v[5],
               (int)plughost_version_at_least(&api.version, v[3], v[4], v[5]),
               (int)require(&api, v[3], v[4], v[5]));
    }}
    return 0;
}}
"#,
        components.join(", ")
    );
    c
}

// ------------------------------------------------------------------------------------------------
// The tests.
// ------------------------------------------------------------------------------------------------

#[test]
fn header_and_rust_mirror_agree_on_layout_types_and_values() {
    let structs = abi_structs();
    let consts = abi_consts();
    let dir = Scratch::new("layout");
    let source = dir.write("layout.c", &layout_program(&structs, &consts));
    let binary = dir.path().join("layout");
    compile_c(&[
        "-std=c11".as_ref(),
        "-Wall".as_ref(),
        "-Wextra".as_ref(),
        "-Werror".as_ref(),
        "-pedantic".as_ref(),
        "-I".as_ref(),
        include_dir().as_os_str(),
        source.as_os_str(),
        "-o".as_ref(),
        binary.as_os_str(),
    ]);
    let output = run(&mut Command::new(&binary), "the layout program");
    let mut c = CValues::parse(&String::from_utf8_lossy(&output.stdout));

    let mut mismatches = Vec::new();
    let mut compare = |what: String, key: String, rust: String| {
        let c_value = c.take(&key);
        if c_value != rust {
            mismatches.push(format!("{what}: C says {c_value}, Rust says {rust}"));
        }
    };
    for s in &structs {
        let n = s.name;
        compare(
            format!("struct {n}: size"),
            format!("sizeof {n}"),
            s.size.to_string(),
        );
        compare(
            format!("struct {n}: alignment"),
            format!("alignof {n}"),
            s.align.to_string(),
        );
        for f in &s.fields {
            let fname = f.name;
            compare(
                format!("struct {n}, field {fname}: offset"),
                format!("offsetof {n}.{fname}"),
                f.offset.to_string(),
            );
            compare(
                format!("struct {n}, field {fname}: size"),
                format!("sizeof {n}.{fname}"),
                f.size.to_string(),
            );
        }
    }
    for (name, size) in abi_scalar_sizes() {
        compare(
            format!("sizeof({name})"),
            format!("sizeof {name}"),
            size.to_string(),
        );
    }
    for k in &consts {
        compare(
            format!("value of {}", k.name),
            format!("value {}", k.name),
            k.value.to_string(),
        );
    }
    compare(
        "PLUGHOST_ENTRY_POINT_V1".to_string(),
        "entry point symbol".to_string(),
        abi::PLUGHOST_ENTRY_POINT_V1.to_string(),
    );
    for running in versions() {
        for required in versions() {
            let at_least = abi::version_at_least(running, required);
            let status = if at_least {
                abi::PLUGHOST_OK
            } else {
                abi::PLUGHOST_E_REQUIRES_UPDATE
            };
            compare(
                format!(
                    "plughost_version_at_least / PLUGHOST_REQUIRE_VERSION({}) with {}",
                    dotted(required),
                    dotted(running)
                ),
                format!("version {}>={}", dotted(running), dotted(required)),
                format!("{} {status}", u8::from(at_least)),
            );
        }
    }
    assert!(
        mismatches.is_empty(),
        "plugin_api.h and crates/abi disagree:\n  {}",
        mismatches.join("\n  ")
    );
    c.assert_all_taken();
}

#[test]
fn header_compiles_as_cpp17() {
    let dir = Scratch::new("cpp");
    let source = dir.write("plugin.cpp", HEADER_USER_PLUGIN);
    let (program, args) = tool_from_env("CXX", "c++");
    let mut command = Command::new(&program);
    command
        .args(&args)
        .args([
            "-std=c++17",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-fsyntax-only",
            "-I",
        ])
        .arg(include_dir())
        .arg(&source);
    match command.output() {
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            println!(
                "skipped: no C++ compiler `{program}` ({error}); set CXX to enable this check"
            );
        }
        result => {
            expect_success(result, &format!("C++ compiler `{program}`"), &command);
        }
    }
}

#[test]
fn plugin_using_the_header_macros_exports_the_entry_point() {
    build_plugin_and_check_exports("macros", HEADER_USER_PLUGIN, &["-std=c11", "-pedantic"]);
}

#[test]
fn example_plugin_of_the_header_builds_and_exports_the_entry_point() {
    let header = std::fs::read_to_string(include_dir().join("plughost/plugin_api.h"))
        .expect("read include/plughost/plugin_api.h");
    let example = extract_example(&header);
    assert!(
        example.contains("PLUGHOST_ENTRY_POINT_V1"),
        "the header's example plugin defines no entry point:\n{example}"
    );
    // The manual's own build command (`cc -shared -fPIC ...`), with warnings as errors.
    build_plugin_and_check_exports("example", &example, &[]);
}

/// A plugin that uses every macro of the header, compiled as C and as C++.
const HEADER_USER_PLUGIN: &str = r#"#include <errno.h>
#include <stddef.h>

#include <plughost/plugin_api.h>

static const struct plughost_api_v1 *g_api;

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    if ((settings->flags & PLUGHOST_VM_CUSTOM_KERNEL) != 0) {
        g_api->plugin_error("custom kernels are not supported");
        return -EOPNOTSUPP;
    }
    return PLUGHOST_OK;
}

/* Not exported: the plugin is built with -fvisibility=hidden, so only PLUGHOST_EXPORT exports. */
int plughost_test_hidden_helper(void);
int plughost_test_hidden_helper(void)
{
    return 0;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *api,
                                                        struct plughost_hooks_v1 *hooks)
{
    /* A statement macro: usable as the body of an if without braces. */
    if (api != NULL)
        PLUGHOST_REQUIRE_VERSION(1, 0, 0, api);
    else
        return PLUGHOST_E_ILLEGAL_CALL;
    g_api = api;
    hooks->on_vm_started = on_vm_started;
    return PLUGHOST_OK;
}

/* The definition matches the entry point's typedef. */
static const plughost_plugin_entry_v1_fn g_entry = PLUGHOST_ENTRY_POINT_V1;
const void *plughost_test_entry(void);
const void *plughost_test_entry(void)
{
    return &g_entry;
}
"#;

// ------------------------------------------------------------------------------------------------
// Helpers.
// ------------------------------------------------------------------------------------------------

/// Compiles `source` into a shared object with `-fvisibility=hidden` and checks with `nm -D` that
/// it exports `plughost_plugin_entry_v1` and nothing else of the plugin's.
fn build_plugin_and_check_exports(name: &str, source: &str, extra_flags: &[&str]) {
    let dir = Scratch::new(name);
    let source = dir.write(&format!("{name}.c"), source);
    let library = dir.path().join(format!("{name}.so"));
    let include = include_dir();
    let mut args: Vec<&std::ffi::OsStr> = extra_flags.iter().map(|flag| flag.as_ref()).collect();
    args.extend([
        "-Wall".as_ref(),
        "-Wextra".as_ref(),
        "-Werror".as_ref(),
        "-fvisibility=hidden".as_ref(),
        "-shared".as_ref(),
        "-fPIC".as_ref(),
        "-I".as_ref(),
        include.as_os_str(),
        source.as_os_str(),
        "-o".as_ref(),
        library.as_os_str(),
    ]);
    compile_c(&args);

    let mut nm = Command::new("nm");
    nm.args(["-D", "--defined-only"]).arg(&library);
    let output = match nm.output() {
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            println!("skipped the export check of {name}.so: no `nm` ({error})");
            return;
        }
        result => expect_success(result, "nm", &nm),
    };
    let symbols = String::from_utf8_lossy(&output.stdout);
    let exported_text: Vec<&str> = symbols
        .lines()
        .filter_map(
            |line| match line.split_whitespace().collect::<Vec<_>>()[..] {
                // `_init`, `_fini` and the like belong to the toolchain, not to the plugin.
                [_, "T", symbol] | ["T", symbol] if !symbol.starts_with('_') => Some(symbol),
                _ => None,
            },
        )
        .collect();
    assert_eq!(
        exported_text,
        [abi::PLUGHOST_ENTRY_POINT_V1],
        "{name}.so must export exactly the entry point as a function; nm -D says:\n{symbols}"
    );
}

/// The example plugin between the header's `---- example plugin` and `---- end of example` lines,
/// without the comment's leading ` * `.
fn extract_example(header: &str) -> String {
    let mut lines = header.lines();
    lines
        .by_ref()
        .find(|line| line.contains("---- example plugin"))
        .expect("the header has an example plugin (a line with `---- example plugin`)");
    let mut example = String::new();
    for line in lines {
        if line.contains("---- end of example") {
            return example;
        }
        let line = line.strip_prefix(" *").unwrap_or(line);
        example.push_str(line.strip_prefix(' ').unwrap_or(line));
        example.push('\n');
    }
    panic!("the header's example plugin has no `---- end of example` line");
}

fn include_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../include")
}

/// `$var` split on whitespace (e.g. `CC="ccache gcc"`), or `default`.
fn tool_from_env(var: &str, default: &str) -> (String, Vec<String>) {
    let value = std::env::var(var)
        .ok()
        .filter(|value| !value.trim().is_empty());
    let value = value.as_deref().unwrap_or(default);
    let mut words = value.split_whitespace().map(str::to_string);
    let program = words.next().expect("non-empty after the filter");
    (program, words.collect())
}

fn compile_c(args: &[&std::ffi::OsStr]) {
    let (program, extra) = tool_from_env("CC", "cc");
    let mut command = Command::new(&program);
    command.args(&extra).args(args);
    expect_success(
        command.output(),
        &format!("C compiler `{program}` (set CC to use another; a C compiler is required)"),
        &command,
    );
}

fn run(command: &mut Command, what: &str) -> Output {
    expect_success(command.output(), what, command)
}

fn expect_success(result: io::Result<Output>, what: &str, command: &Command) -> Output {
    let output = result.unwrap_or_else(|error| panic!("cannot run {what}: {error}\n{command:?}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{command:?}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn versions() -> impl Iterator<Item = abi::plughost_version> {
    VERSION_COMPONENTS.into_iter().flat_map(|major| {
        VERSION_COMPONENTS.into_iter().flat_map(move |minor| {
            VERSION_COMPONENTS
                .into_iter()
                .map(move |revision| abi::plughost_version {
                    major,
                    minor,
                    revision,
                })
        })
    })
}

fn dotted(version: abi::plughost_version) -> String {
    format!("{}.{}.{}", version.major, version.minor, version.revision)
}

/// The C program's `key\tvalue` lines; every key must be compared exactly once.
struct CValues(HashMap<String, String>);

impl CValues {
    fn parse(stdout: &str) -> Self {
        let mut values = HashMap::new();
        for line in stdout.lines() {
            let (key, value) = line
                .split_once('\t')
                .unwrap_or_else(|| panic!("malformed line from the layout program: {line:?}"));
            let previous = values.insert(key.to_string(), value.to_string());
            assert!(
                previous.is_none(),
                "the layout program printed {key:?} twice"
            );
        }
        Self(values)
    }

    fn take(&mut self, key: &str) -> String {
        self.0
            .remove(key)
            .unwrap_or_else(|| panic!("the layout program did not print {key:?}"))
    }

    fn assert_all_taken(&self) {
        assert!(
            self.0.is_empty(),
            "values printed by C but not compared: {:?}",
            self.0
        );
    }
}

/// A fresh directory under the system temp dir, removed on drop unless the test failed (then its
/// path is printed, to look at the generated sources).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "plughost-abi-{name}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&path)
            .unwrap_or_else(|error| panic!("create {}: {error}", path.display()));
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents)
            .unwrap_or_else(|error| panic!("write {}: {error}", path.display()));
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept {} for inspection", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
