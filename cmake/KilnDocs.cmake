# Turns kiln's own --help output into a man page (roff) and a bash completion
# script, so that neither can drift from the program. Run at build time:
#
#   cmake -DKILN=path/to/kiln -DVERSION=0.1.0 -DMAN_OUT=kiln.1
#         -DBASH_OUT=kiln.bash -P KilnDocs.cmake
#
# It runs `kiln --help`, then `kiln CMD --help` for every command listed
# under "Subcommands:", recursively. CLI11's help has this shape:
#
#   Description, possibly several lines
#   Usage: kiln cmd [OPTIONS] ARGS
#   <blank>
#   Section:                      (Options, Positionals, Subcommands, or a group)
#     NAME [TYPE ...]             Description
#     A-LONG-NAME ...
#                                 Its description on the next line
#
# CMake lists split on ';' and group on '[' ']', so those characters (and
# backslashes) travel through the parsing as @SEMI@, @LB@, @RB@, @BS@.

cmake_minimum_required(VERSION 3.25)
foreach(var KILN VERSION MAN_OUT BASH_OUT)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "KilnDocs.cmake needs -D${var}=...")
  endif()
endforeach()

function(kiln_escape text out)
  string(REPLACE "\\" "@BS@" text "${text}")
  string(REPLACE ";" "@SEMI@" text "${text}")
  string(REPLACE "[" "@LB@" text "${text}")
  string(REPLACE "]" "@RB@" text "${text}")
  set(${out} "${text}" PARENT_SCOPE)
endfunction()

function(kiln_unescape text out)
  string(REPLACE "@SEMI@" ";" text "${text}")
  string(REPLACE "@LB@" "[" text "${text}")
  string(REPLACE "@RB@" "]" text "${text}")
  string(REPLACE "@BS@" "\\" text "${text}")
  set(${out} "${text}" PARENT_SCOPE)
endfunction()

# Text for roff: backslashes, hyphens of options, lines starting with '.' or ', and
# non-ASCII characters.
function(kiln_roff text out)
  kiln_unescape("${text}" text)
  string(REPLACE "\\" "\\e" text "${text}")
  string(REGEX REPLACE "(^|[ ,(/])--" "\\1\\\\-\\\\-" text "${text}")
  string(REGEX REPLACE "(^|[ ,(/])-" "\\1\\\\-" text "${text}")
  string(REGEX REPLACE "^([.'])" "\\\\&\\1" text "${text}")
  # The few non-ASCII characters kiln's help uses, as groff names them.
  string(REPLACE "…" "\\[u2026]" text "${text}")
  string(REPLACE "→" "\\[->]" text "${text}")
  string(REPLACE "—" "\\[em]" text "${text}")
  string(REPLACE "–" "\\[en]" text "${text}")
  set(${out} "${text}" PARENT_SCOPE)
endfunction()

# Parse `kiln <words> --help` into variables prefixed with `prefix`:
#   _DESC (lines), _USAGE, _SECTIONS (names), _<section>_NAMES / _<section>_DESCS.
function(kiln_parse_help words prefix)
  execute_process(COMMAND "${KILN}" ${words} --help
                  OUTPUT_VARIABLE text RESULT_VARIABLE rc ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "kiln ${words} --help failed (${rc}): ${err}")
  endif()
  kiln_escape("${text}" text)
  string(REPLACE "\n" ";" lines "${text}")
  set(desc "")
  set(usage "")
  set(sections "")
  set(section "")
  set(names "")
  set(descs "")
  set(pending_name "")
  foreach(line IN LISTS lines)
    if(usage STREQUAL "" AND NOT line MATCHES "^Usage: ")
      list(APPEND desc "${line}")
    elseif(line MATCHES "^Usage: (.*)$")
      set(usage "${CMAKE_MATCH_1}")
    elseif(line MATCHES "^([A-Za-z][A-Za-z ]*):$")
      set(section "${CMAKE_MATCH_1}")
      string(REPLACE " " "_" section "${section}")
      list(APPEND sections "${section}")
      set(${prefix}_${section}_NAMES "" PARENT_SCOPE)
      set(${prefix}_${section}_DESCS "" PARENT_SCOPE)
      set(names_${section} "")
      set(descs_${section} "")
    elseif(NOT section STREQUAL "" AND line MATCHES "^  ([^ ]+( [^ ]+)*)  +(.*)$")
      list(APPEND names_${section} "${CMAKE_MATCH_1}")
      list(APPEND descs_${section} "${CMAKE_MATCH_3}")
      set(pending_name "")
    elseif(NOT section STREQUAL "" AND line MATCHES "^  ([^ ].*)$")
      set(pending_name "${CMAKE_MATCH_1}")
    elseif(NOT pending_name STREQUAL "" AND line MATCHES "^      +(.*)$")
      list(APPEND names_${section} "${pending_name}")
      list(APPEND descs_${section} "${CMAKE_MATCH_1}")
      set(pending_name "")
    endif()
  endforeach()
  set(${prefix}_DESC "${desc}" PARENT_SCOPE)
  set(${prefix}_USAGE "${usage}" PARENT_SCOPE)
  set(${prefix}_SECTIONS "${sections}" PARENT_SCOPE)
  foreach(s IN LISTS sections)
    set(${prefix}_${s}_NAMES "${names_${s}}" PARENT_SCOPE)
    set(${prefix}_${s}_DESCS "${descs_${s}}" PARENT_SCOPE)
  endforeach()
endfunction()

# The option names in a help entry's name column ("-j,--jobs TEXT" gives
# -j;--jobs), and whether it takes a value.
function(kiln_option_names column out takes_value)
  string(REGEX MATCH "^[^ ]+" first "${column}")
  set(result "")
  if(first MATCHES "^-")
    string(REPLACE "," ";" result "${first}")
  endif()
  set(${out} "${result}" PARENT_SCOPE)
  if(column MATCHES "^[^ ]+ [A-Z]")
    set(${takes_value} TRUE PARENT_SCOPE)
  else()
    set(${takes_value} FALSE PARENT_SCOPE)
  endif()
endfunction()

# roff for the non-empty lines of a description.
function(kiln_roff_lines lines out)
  set(roff "")
  foreach(line IN LISTS ${lines})
    if(NOT line STREQUAL "")
      kiln_roff("${line}" line)
      string(APPEND roff "${line}\n")
    endif()
  endforeach()
  set(${out} "${roff}" PARENT_SCOPE)
endfunction()

# roff for the entries of one section: .TP, the name in bold, the description.
function(kiln_roff_entries prefix section out)
  set(roff "")
  list(LENGTH ${prefix}_${section}_NAMES n)
  if(n GREATER 0)
    math(EXPR last "${n} - 1")
    foreach(i RANGE ${last})
      list(GET ${prefix}_${section}_NAMES ${i} name)
      list(GET ${prefix}_${section}_DESCS ${i} desc)
      if(name MATCHES "^([^ ]+)(.*)$")
        kiln_roff("${CMAKE_MATCH_1}" head)
        kiln_roff("${CMAKE_MATCH_2}" tail)
        kiln_roff("${desc}" desc)
        string(APPEND roff ".TP\n\\fB${head}\\fR${tail}\n${desc}\n")
      endif()
    endforeach()
  endif()
  set(${out} "${roff}" PARENT_SCOPE)
endfunction()

# --- Walk every command ----------------------------------------------------

kiln_parse_help("" TOP)
set(queue "")
foreach(cmd IN LISTS TOP_Subcommands_NAMES)
  list(APPEND queue "${cmd}")
endforeach()
set(commands "")
set(global_opts "")
set(global_value_opts "")
foreach(section IN LISTS TOP_SECTIONS)
  if(NOT section STREQUAL "Subcommands")
    foreach(column IN LISTS TOP_${section}_NAMES)
      kiln_option_names("${column}" opts takes)
      list(APPEND global_opts ${opts})
      if(takes)
        list(APPEND global_value_opts ${opts})
      endif()
    endforeach()
  endif()
endforeach()

set(man_commands "")
set(bash_cases "")
set(bash_value_opts "${global_value_opts}")
set(bash_top_subs "${TOP_Subcommands_NAMES}")
while(queue)
  list(POP_FRONT queue path)   # "store add" as "store@SP@add"
  string(REPLACE "@SP@" ";" words "${path}")
  string(REPLACE "@SP@" " " spaced "${path}")
  string(MAKE_C_IDENTIFIER "${spaced}" id)
  kiln_parse_help("${words}" C_${id})
  list(APPEND commands "${path}")

  # man: a subsection per command
  kiln_roff_lines(C_${id}_DESC desc_roff)
  kiln_roff("${C_${id}_USAGE}" usage_roff)
  string(APPEND man_commands ".SS \"kiln ${spaced}\"\n${desc_roff}.PP\n.B ${usage_roff}\n")
  set(subs "")
  set(opts "")
  foreach(section IN LISTS C_${id}_SECTIONS)
    if(section STREQUAL "Subcommands")
      foreach(sub IN LISTS C_${id}_Subcommands_NAMES)
        list(APPEND queue "${path}@SP@${sub}")
        list(APPEND subs "${sub}")
      endforeach()
    endif()
    foreach(column IN LISTS C_${id}_${section}_NAMES)
      kiln_option_names("${column}" names takes)
      list(APPEND opts ${names})
      if(takes)
        list(APPEND bash_value_opts ${names})
      endif()
    endforeach()
    kiln_roff_entries(C_${id} "${section}" entries)
    if(NOT entries STREQUAL "" AND NOT (section STREQUAL "Options" AND
                                        "${C_${id}_Options_NAMES}" STREQUAL "-h,--help"))
      string(REPLACE "_" " " title "${section}")
      string(APPEND man_commands ".PP\n${title}:\n.RS\n${entries}.RE\n")
    endif()
  endforeach()
  list(JOIN subs " " subs)
  list(JOIN opts " " opts)
  string(APPEND bash_cases "    \"${spaced}\") subs=\"${subs}\"; opts=\"${opts}\" ;;\n")
endwhile()

# --- The man page ----------------------------------------------------------

kiln_roff_lines(TOP_DESC top_desc)
kiln_roff_entries(TOP Options top_options)
kiln_roff_entries(TOP Settings top_settings)
kiln_roff_entries(TOP Subcommands top_commands)

file(WRITE "${MAN_OUT}.tmp"
".\\\" Generated from kiln's --help output by cmake/KilnDocs.cmake; do not edit.
.TH KILN 1 \"\" \"kiln ${VERSION}\" \"User Commands\"
.SH NAME
kiln \\- a build cache for Rust, with Nix-compatible stores and binary caches
.SH SYNOPSIS
.B kiln
[\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR...]
.br
.B cargo kiln
\\fICOMMAND\\fR [\\fIARGS\\fR...]
.SH DESCRIPTION
${top_desc}.PP
Every command has \\fB\\-\\-help\\fR. Commands that scripts read take \\fB\\-\\-json\\fR.
\\fBcargo kiln\\fR runs \\fBkiln\\fR as a Cargo subcommand (through \\fBcargo\\-kiln\\fR).
.SH OPTIONS
${top_options}.SH SETTINGS
Each setting has a flag, an environment variable and a key in the YAML config file.
Flags win over the environment, which wins over the file, which wins over the defaults.
\\fBkiln config show\\fR prints every value and where it came from.
${top_settings}.SH COMMANDS
${top_commands}.SH COMMAND REFERENCE
${man_commands}.SH EXIT STATUS
0 on success, 1 on failure, 2 on bad usage. Errors are one line on standard error.
.SH FILES
.TP
.I $XDG_CONFIG_HOME/kiln/config.yaml
The config file (\\fI~/.config/kiln/config.yaml\\fR), unless \\fB\\-\\-config\\fR or
\\fBKILN_CONFIG\\fR names another. \\fBkiln use\\fR adds caches and keys to it.
.TP
.I $XDG_DATA_HOME/kiln
The store (\\fI~/.local/share/kiln\\fR), unless \\fBstore\\fR says otherwise.
.SH SEE ALSO
.BR cargo (1),
.BR nix\\-store (1),
.BR nginx (8)
")
file(RENAME "${MAN_OUT}.tmp" "${MAN_OUT}")

# --- The bash completion ---------------------------------------------------

list(JOIN global_opts " " global_opts)
list(REMOVE_DUPLICATES bash_value_opts)
list(JOIN bash_value_opts "|" bash_value_opts)
list(JOIN bash_top_subs " " bash_top_subs)
kiln_unescape("${bash_cases}" bash_cases)
file(WRITE "${BASH_OUT}.tmp"
"# bash completion for kiln.
# Generated from kiln's --help output by cmake/KilnDocs.cmake; do not edit.

# The subcommands and options of a command path (\"\" for kiln itself).
_kiln_words()
{
    local subs opts
    case \"$1\" in
    \"\") subs=\"${bash_top_subs}\"; opts=\"\" ;;
${bash_cases}    esac
    _kiln_subs=$subs
    _kiln_opts=\"$opts ${global_opts}\"
}

_kiln()
{
    local cur=\${COMP_WORDS[COMP_CWORD]} prev=\${COMP_WORDS[COMP_CWORD-1]}
    local path=\"\" i w
    case $prev in
    ${bash_value_opts})
        COMPREPLY=($(compgen -f -- \"$cur\"))
        return
        ;;
    esac
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=\${COMP_WORDS[i]}
        [[ $w == -* ]] && continue
        _kiln_words \"$path\"
        if [[ \" $_kiln_subs \" == *\" $w \"* ]]; then
            path=\${path:+$path }$w
        fi
    done
    _kiln_words \"$path\"
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W \"$_kiln_opts\" -- \"$cur\"))
    elif [[ -n $_kiln_subs ]]; then
        COMPREPLY=($(compgen -W \"$_kiln_subs\" -- \"$cur\"))
    else
        COMPREPLY=($(compgen -f -- \"$cur\"))
    fi
}

complete -F _kiln kiln
")
file(RENAME "${BASH_OUT}.tmp" "${BASH_OUT}")
