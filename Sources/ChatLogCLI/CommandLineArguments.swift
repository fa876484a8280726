/// What the command line goes through before ArgumentParser sees it.
enum CommandLineArguments {
    struct UsageError: Error {
        let message: String
    }

    /// - `--db PATH` (or `--db=PATH`) before the subcommand moves after it: `chatlog --db X list`.
    /// - `--name -5` becomes `--name=-5`, so that a negative number reaches the option's own
    ///   check ("--limit must be between 1 and 10000") instead of "Missing value".
    /// - An option given twice is refused: ArgumentParser would silently keep the last one
    ///   (`--db a --db b` would act on b).
    /// Nothing after a `--` is touched.
    static func normalized(_ arguments: [String]) throws(UsageError) -> [String] {
        var arguments = arguments
        // Leading --db, before the first word that is not an option.
        var leading: [String] = []
        while let first = arguments.first {
            if first == "--db", arguments.count >= 2 {
                leading += arguments.prefix(2)
                arguments.removeFirst(2)
            } else if first.hasPrefix("--db=") {
                leading.append(first)
                arguments.removeFirst()
            } else {
                break
            }
        }
        if !leading.isEmpty {
            let terminator = arguments.firstIndex(of: "--") ?? arguments.endIndex
            arguments.insert(contentsOf: leading, at: terminator)
        }

        var result: [String] = []
        var seen: Set<String> = []
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            if argument == "--" {
                result += arguments[index...]
                break
            }
            if let name = optionName(argument) {
                let canonical = aliases[name] ?? name
                if !repeatable.contains(canonical), !seen.insert(canonical).inserted {
                    throw UsageError(message: "\(name) is given more than once; give it once")
                }
                if !argument.contains("="), index + 1 < arguments.count, isNegativeNumber(arguments[index + 1]) {
                    result.append(argument + "=" + arguments[index + 1])
                    index += 2
                    continue
                }
            }
            result.append(argument)
            index += 1
        }
        return result
    }

    /// Options that take a list (`rm --message A --message B`).
    static let repeatable: Set<String> = ["--message"]
    /// Short spellings of long options, so that `-n 5 --limit 50` counts as given twice.
    static let aliases: [String: String] = ["-n": "--limit"]

    /// `--name` of `--name` or `--name=value`; `-n` of `-n`; nil for anything else (values,
    /// negative numbers, `-`).
    static func optionName(_ argument: String) -> String? {
        if argument.hasPrefix("--"), argument.count > 2 {
            return String(argument.prefix(while: { $0 != "=" }))
        }
        if argument.count == 2, argument.first == "-", let letter = argument.last, letter.isLetter { return argument }
        return nil
    }

    static func isNegativeNumber(_ text: String) -> Bool {
        guard text.hasPrefix("-"), text.count > 1 else { return false }
        return text.dropFirst().allSatisfy { $0.isNumber || $0 == "." }
    }

    /// ArgumentParser's message on one line: its first line, without "Error: ", and a pointer to
    /// the help (which stays complete with `--help`).
    static func oneLine(_ message: String) -> String {
        var first = message.split(separator: "\n").first.map(String.init) ?? message
        if first.hasPrefix("Error: ") { first.removeFirst("Error: ".count) }
        if first.hasSuffix(".") { first.removeLast() }
        return first + " (see --help)"
    }
}
