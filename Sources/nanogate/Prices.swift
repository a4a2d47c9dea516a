import ArgumentParser
import Foundation
import NanoGateServer

struct Prices: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Prices per upstream model (USD per 1M tokens by modality).", subcommands: [List.self, Set.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the prices every upstream model is charged at.")
        @Flag(help: "Print JSON.") var json = false
        @OptionGroup var data: DataDirectoryOption

        func run() async throws {
            let prices = try await withOperator(data) { try await $0.prices() }
            if json { return try printJSON(prices) }
            print(["MODEL", "INPUT_TEXT", "INPUT_IMAGE", "OUTPUT_TEXT", "OUTPUT_IMAGE", "SOURCE"].joined(separator: "\t"))
            for price in prices {
                print([price.model, "\(price.input_text)", "\(price.input_image)", "\(price.output_text)", "\(price.output_image)", price.source].joined(separator: "\t"))
            }
        }
    }

    struct Set: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Override an upstream model's prices (the others keep theirs).")
        @Argument(help: "The upstream model id, e.g. gemini-3-pro-image.") var model: String
        @Option(help: "USD per 1M input text tokens.") var inputText: Double?
        @Option(help: "USD per 1M input image tokens.") var inputImage: Double?
        @Option(help: "USD per 1M output text tokens (thinking included).") var outputText: Double?
        @Option(help: "USD per 1M output image tokens.") var outputImage: Double?
        @Flag(help: "Print JSON.") var json = false
        @OptionGroup var data: DataDirectoryOption

        func run() async throws {
            let view = try await withOperator(data) {
                try await $0.setPrice(model: model, inputText: inputText, inputImage: inputImage, outputText: outputText, outputImage: outputImage)
            }
            if json { return try printJSON(view) }
            print("Set \(view.model): input text \(view.input_text), input image \(view.input_image), output text \(view.output_text), output image \(view.output_image) USD per 1M tokens.")
        }
    }
}
