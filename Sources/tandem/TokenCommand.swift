import ArgumentParser
import Foundation
import NIOHTTP1
import TandemAPI
import TandemCore

struct TokenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token", abstract: "Bearer tokens of the management API: create, list, revoke.",
        subcommands: [Create.self, List.self, Revoke.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make a token and print it, once: only its SHA-256 is kept.")
        @OptionGroup var options: NodeOptions
        @Option(help: "viewer (reads), operator (also standby/online, cleanup/refresh, verify) or admin.")
        var role: APIRole
        @Option(help: "Its name, for the list and the audit trail (default: ROLE-RANDOM).") var name: String?
        @Option(help: "How long it lasts: 30d, 12h, 90m (default: until revoked).") var expires: String?

        func run() async throws {
            var seconds: Double?
            if let expires {
                if expires.hasSuffix("d"), let days = Double(expires.dropLast()), days > 0 {
                    seconds = days * 86400
                } else if let duration = Units.parseDuration(expires) {
                    seconds = Double(duration.components.seconds)
                } else {
                    throw fail("--expires: expected a duration such as 30d, 12h or 90m, found \(expires)")
                }
            }
            let request = CreateTokenRequest(
                name: name ?? "\(role.rawValue)-\(UInt16.random(in: 0...UInt16.max))", role: role,
                expiresInSeconds: seconds)
            try options.call(.POST, APIPath.tokens, request, as: CreatedToken.self) { created in
                Swift.print(created.token)
                FileHandleOutput.standardError(
                    "token \(created.record.name) (\(created.record.role.rawValue), id \(created.record.id)) "
                        + (created.record.expiresAt.map { "expires \(Date(timeIntervalSince1970: $0))" }
                            ?? "does not expire")
                        + "; it is not shown again")
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The tokens: id, name, role, expiry.")
        @OptionGroup var options: NodeOptions

        func run() async throws {
            try options.call(.GET, APIPath.tokens, as: TokenList.self) { list in TokenCommand.print(list) }
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a token, by id or name.")
        @OptionGroup var options: NodeOptions
        @Argument(help: "The token's id or name.") var key: String

        func run() async throws {
            try options.call(.DELETE, APIPath.token(key), as: TokenList.self) { list in TokenCommand.print(list) }
        }
    }

    static func print(_ list: TokenList) {
        var rows = [["ID", "NAME", "ROLE", "CREATED ON", "EXPIRES"]]
        for token in list.tokens {
            rows.append([
                token.id, token.name, token.role.rawValue, token.createdOn,
                token.expiresAt.map { "\(Date(timeIntervalSince1970: $0))" } ?? "never",
            ])
        }
        let widths = (0..<rows[0].count).map { column in rows.map { $0[column].count }.max() ?? 0 }
        for row in rows {
            Swift.print(
                zip(row, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }.joined(separator: "  "))
        }
    }
}

extension APIRole: ExpressibleByArgument {}
