import ArgumentParser
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

enum ColorChoice: String, ExpressibleByArgument, CaseIterable {
    case auto, always, never
}

/// `--color`, for commands whose human output has emphasis.
struct DisplayOptions: ParsableArguments {
    @Option(name: .long, help: "Bold and dim text: auto (on a terminal, unless NO_COLOR is set or TERM=dumb), always or never.")
    var color: ColorChoice = .auto

    var style: TerminalStyle { TerminalStyle(color) }
}

/// Escape sequences for emphasis, empty when colour is off; the width lines are cut to.
struct TerminalStyle {
    let bold: String
    let dim: String
    let reset: String
    /// Columns of the terminal (or $COLUMNS); nil when output is not a terminal and COLUMNS is
    /// unset: lines are then not cut.
    let width: Int?

    init(_ choice: ColorChoice, environment: [String: String] = ProcessInfo.processInfo.environment) {
        let on: Bool
        switch choice {
        case .always: on = true
        case .never: on = false
        case .auto:
            on = CLIOutput.stdoutIsTerminal && (environment["NO_COLOR"] ?? "").isEmpty && environment["TERM"] != "dumb"
        }
        bold = on ? "\u{1B}[1m" : ""
        dim = on ? "\u{1B}[2m" : ""
        reset = on ? "\u{1B}[0m" : ""
        width = Self.columns(environment)
    }

    private static func columns(_ environment: [String: String]) -> Int? {
        if let text = environment["COLUMNS"], let columns = Int(text), columns > 0 { return max(20, columns) }
        var size = winsize()
        if CLIOutput.stdoutIsTerminal, ioctl(1, UInt(TIOCGWINSZ), &size) == 0, size.ws_col > 0 { return max(20, Int(size.ws_col)) }
        return nil
    }

    /// `text` (one line, without escape sequences) cut to the width with an ellipsis.
    func fit(_ text: String) -> String {
        guard let width else { return text }
        return DisplayWidth.truncate(text, to: width)
    }

    /// Words of `text` wrapped to the width after `indent`; `highlights` (ranges of `text`) are
    /// shown bold. Control characters are escaped.
    func wrap(_ text: String, highlights: [Range<String.Index>], indent: String) -> [String] {
        // Each character with whether it is highlighted, spaces as word breaks.
        var words: [[(Character, Bool)]] = [[]]
        var index = text.startIndex
        let sorted = highlights.sorted { $0.lowerBound < $1.lowerBound }
        while index < text.endIndex {
            let character = text[index]
            if character.isWhitespace {
                if !(words.last?.isEmpty ?? true) { words.append([]) }
            } else {
                let lit = sorted.contains { $0.contains(index) }
                for shown in CLIOutput.terminalSafe(String(character)) { words[words.count - 1].append((shown, lit)) }
            }
            index = text.index(after: index)
        }
        let limit = width.map { max(10, $0 - DisplayWidth.of(indent)) } ?? Int.max
        var lines: [String] = []
        var line = ""
        var used = 0
        for word in words where !word.isEmpty {
            let size = word.reduce(0) { $0 + DisplayWidth.of($1.0) }
            if used > 0, used + 1 + size > limit {
                lines.append(indent + line)
                line = ""
                used = 0
            }
            if used > 0 {
                line += " "
                used += 1
            }
            var lit = false
            for (character, highlighted) in word {
                if highlighted != lit {
                    line += highlighted ? bold : reset
                    lit = highlighted
                }
                line.append(character)
            }
            if lit { line += reset }
            used += size
        }
        if !line.isEmpty || lines.isEmpty { lines.append(indent + line) }
        return lines
    }
}

/// Terminal columns taken by text: East Asian wide characters and most emoji take two,
/// combining marks none (they are inside their base character).
enum DisplayWidth {
    static func of(_ character: Character) -> Int {
        guard let scalar = character.unicodeScalars.first else { return 0 }
        if character.unicodeScalars.count > 1, character.unicodeScalars.contains(where: { $0.properties.isEmojiPresentation }) {
            return 2
        }
        switch scalar.value {
        case 0x1100...0x115F, 0x2E80...0x303E, 0x3041...0x33FF, 0x3400...0x4DBF, 0x4E00...0x9FFF, 0xA000...0xA4CF, 0xAC00...0xD7A3,
            0xF900...0xFAFF, 0xFE30...0xFE4F, 0xFF00...0xFF60, 0xFFE0...0xFFE6, 0x1F300...0x1F64F, 0x1F900...0x1F9FF,
            0x20000...0x3FFFD:
            return 2
        default:
            return scalar.properties.isEmojiPresentation ? 2 : 1
        }
    }

    static func of(_ text: String) -> Int { text.reduce(0) { $0 + of($1) } }

    static func truncate(_ text: String, to width: Int) -> String {
        guard of(text) > width else { return text }
        var output = ""
        var used = 0
        for character in text {
            let size = of(character)
            if used + size > width - 1 { break }
            output.append(character)
            used += size
        }
        return output + "…"
    }
}
