import ArgumentParser
import Foundation
import NanoGateCore
import NanoGateServer
import NanoGateStorage

/// Options shared by `keys create` and `keys update`.
struct KeyLimitOptions: ParsableArguments {
    @Option(help: "Credit in USD (absent: unlimited).") var credit: Double?
    @Option(help: "Expiry, ISO 8601 (2027-01-01T00:00:00Z).") var expires: String?
    @Option(help: "Models the key may use, comma-separated (absent: all).") var models: String?
    @Option(help: "Requests per minute.") var rpm: Int?
    @Option(help: "Requests in flight at once.") var concurrency: Int?
    @Option(help: "Service tiers the key may use, comma-separated: flex, standard, priority (absent: its group's).") var tiers: String?

    func expiryDate() throws -> Date? {
        guard let expires else { return nil }
        guard let date = OperatorService.date(expires) else { throw ValidationError("--expires must be ISO 8601, e.g. 2027-01-01T00:00:00Z.") }
        return date
    }

    func modelList() -> [String]? {
        models.map { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty } }
    }

    /// The `--tiers` list, checked (nil when absent).
    func tierList() throws -> [String]? {
        guard let tiers else { return nil }
        do {
            return try ServiceTier.list(tiers.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty })
        } catch {
            throw ValidationError("--tiers: \(error.message)")
        }
    }

    func validate() throws {
        if let rpm, rpm < 1 { throw ValidationError("--rpm must be 1 or more.") }
        if let concurrency, concurrency < 1 { throw ValidationError("--concurrency must be 1 or more.") }
    }
}

struct Keys: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Manage NanoGate API keys.",
        subcommands: [Create.self, Show.self, List.self, Update.self, Rotate.self, Revoke.self]
    )

    static func group(_ text: String) throws -> KeyGroup {
        guard let group = KeyGroup(lenient: text) else { throw ValidationError("--group must be 1 to 64 letters, digits, '-' or '_'.") }
        return group
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a key; its secret is printed once, alone on the last line.")
        @Option(help: "A unique name for the key.") var name: String
        @Option(help: "Its group: default (answers with URLs unless asked), gemini (base64), or one you created.") var group = "default"
        @OptionGroup var limits: KeyLimitOptions
        @Flag(help: "Print the key as JSON (with its secret in `secret`).") var json = false
        @OptionGroup var data: DataDirectoryOption

        func run() async throws {
            let options = KeyOptions(
                creditMicroUSD: try limits.credit.map { try OperatorService.microUSD($0, field: "--credit") }, expiresAt: try limits.expiryDate(),
                models: limits.modelList(), rpm: limits.rpm, concurrency: limits.concurrency
            )
            let group = try Keys.group(group)
            let tiers = try limits.tierList()
            let (key, secret) = try await withOperator(data) { service in
                let created = try await service.store.createKey(name: name, group: group, options: options)
                guard let tiers else { return created }
                return (try await service.store.updateKey(name: name, KeyUpdate(serviceTiers: .set(tiers))), created.secret)
            }
            if json {
                try printJSON(OperatorService.KeyView(key, secret: secret))
                return
            }
            print("Created key '\(key.name)' (group \(key.group.rawValue)\(key.creditMicroUSD.map { ", credit $" + String(format: "%.2f", TokenPrices.usd($0)) } ?? "")). Store the secret now; it is not shown again:")
            print(secret)
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one key: group, credit, spent, reserved, balance, limits.")
        @Argument(help: "The key's name.") var name: String
        @Flag(help: "Print JSON.") var json = false
        @OptionGroup var data: DataDirectoryOption

        func run() async throws {
            guard let key = try await withOperator(data, { try await $0.store.key(named: name) }) else { throw ValidationError("No active key named '\(name)'.") }
            let view = OperatorService.KeyView(key)
            if json { return try printJSON(view) }
            func usd(_ value: Double?) -> String { value.map { String(format: "$%.6f", $0) } ?? "unlimited" }
            print("""
                name:        \(view.name)
                group:       \(view.group)
                credit:      \(usd(view.credit_usd))
                spent:       \(usd(view.spent_usd))
                reserved:    \(usd(view.reserved_usd))
                balance:     \(usd(view.balance_usd))
                expires:     \(view.expires_at ?? "never")
                models:      \(view.models?.joined(separator: ",") ?? "all")
                rpm:         \(view.rpm.map(String.init) ?? "no limit")
                concurrency: \(view.concurrency.map(String.init) ?? "no limit")
                disabled:    \(view.disabled)
                """)
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List keys (never their secrets).")
        @Flag(help: "Print JSON (active keys).") var json = false
        @OptionGroup var data: DataDirectoryOption

        func run() async throws {
            let keys = try await withOperator(data) { try await $0.store.listKeys() }
            if json { return try printJSON(keys.filter { $0.revokedAt == nil }.map { OperatorService.KeyView($0) }) }
            let formatter = ISO8601DateFormatter()
            print(["NAME", "GROUP", "PREFIX", "CREATED", "STATUS", "BALANCE"].joined(separator: "\t"))
            for key in keys {
                let status = key.revokedAt.map { "revoked \(formatter.string(from: $0))" } ?? (key.disabled ? "disabled" : "active")
                let balance = key.balanceMicroUSD.map { String(format: "$%.2f", TokenPrices.usd($0)) } ?? "unlimited"
                print([key.name, key.group.rawValue, key.prefix + "…", formatter.string(from: key.createdAt), status, balance].joined(separator: "\t"))
            }
        }
    }

    struct Update: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Change a key's group, credit, expiry, models or limits.")
        @Argument(help: "The key's name.") var name: String
        @Option(help: "Move it to this group.") var group: String?
        @OptionGroup var limits: KeyLimitOptions
        @Option(help: "Add this many USD to its credit (a top-up, atomic).") var addCredit: Double?
        @Flag(help: "Make it unlimited (no credit).") var unlimited = false
        @Flag(help: "Disable it (401 until enabled).") var disable = false
        @Flag(help: "Enable it.") var enable = false
        @Flag(help: "Print JSON.") var json = false
        @OptionGroup var data: DataDirectoryOption

        func run() async throws {
            var update = KeyUpdate()
            if let group { update.group = try Keys.group(group) }
            if let credit = limits.credit { update.credit = .set(try OperatorService.microUSD(credit, field: "--credit")) }
            if unlimited { update.credit = .clear }
            if let add = addCredit { update.addCredit = try OperatorService.microUSD(add, field: "--add-credit") }
            if let expires = try limits.expiryDate() { update.expiresAt = .set(expires) }
            if let models = limits.modelList() { update.models = models.isEmpty ? .clear : .set(models) }
            if let rpm = limits.rpm { update.rpm = .set(rpm) }
            if let concurrency = limits.concurrency { update.concurrency = .set(concurrency) }
            if let tiers = try limits.tierList() { update.serviceTiers = tiers.isEmpty ? .clear : .set(tiers) }
            if disable { update.disabled = true }
            if enable { update.disabled = false }
            let key = try await withOperator(data) { try await $0.store.updateKey(name: name, update) }
            if json { return try printJSON(OperatorService.KeyView(key)) }
            print("Updated key '\(key.name)'.")
        }
    }

    struct Rotate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Give a key a new secret (printed alone on the last line); the old one stops working at once.")
        @Argument(help: "The key's name.") var name: String
        @Flag(help: "Print the key as JSON (with its new secret in `secret`).") var json = false
        @OptionGroup var data: DataDirectoryOption

        func run() async throws {
            let (key, secret) = try await withOperator(data) { try await $0.store.rotateKey(name: name) }
            if json { return try printJSON(OperatorService.KeyView(key, secret: secret)) }
            print("Rotated key '\(key.name)'. Store the new secret now; it is not shown again:")
            print(secret)
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Revoke the active key with this name; it stops working at once.")
        @Argument(help: "The key's name.") var name: String
        @Flag(help: "Print JSON.") var json = false
        @OptionGroup var data: DataDirectoryOption

        func run() async throws {
            try await withOperator(data) { try await $0.store.revokeKey(name: name) }
            struct Revoked: Encodable {
                var name: String
                var revoked = true
            }
            if json { return try printJSON(Revoked(name: name)) }
            print("Revoked key '\(name)'.")
        }
    }
}
