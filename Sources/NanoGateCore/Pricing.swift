/// Billing arithmetic in integer micro-USD: Google's token counts by modality × the price per
/// million tokens, one rounding at the end, a group multiplier in millionths on top.
public enum Pricing {
    /// Micro-USD as an exact decimal string of USD (`0.038713`), for the `X-NanoGate-Cost` header.
    public static func usdText(_ micro: Int) -> String {
        let sign = micro < 0 ? "-" : ""
        let magnitude = micro.magnitude
        let fraction = String(magnitude % 1_000_000)
        return "\(sign)\(magnitude / 1_000_000).\(String(repeating: "0", count: 6 - fraction.count))\(fraction)"
    }

    public static func costMicroUSD(_ usage: ImageUsage, prices: TokenPrices, multiplierPPM: Int = 1_000_000) -> Int {
        func times(_ a: Int, _ b: Int) -> Int {
            let (product, overflow) = a.multipliedReportingOverflow(by: b)
            return overflow ? .max : product
        }
        func plus(_ a: Int, _ b: Int) -> Int {
            let (sum, overflow) = a.addingReportingOverflow(b)
            return overflow ? .max : sum
        }
        // Token counts are clamped by the decoder and prices by the configuration: no trap here either way.
        let parts = [
            times(max(0, usage.inputTokensDetails.textTokens), prices.inputText),
            times(max(0, usage.inputTokensDetails.imageTokens), prices.inputImage),
            times(max(0, usage.outputTokensDetails.textTokens), prices.outputText),
            times(max(0, usage.outputTokensDetails.imageTokens), prices.outputImage),
        ]
        let total = parts.reduce(0, plus)
        let cost = total == .max ? total / 1_000_000 : (total + 500_000) / 1_000_000
        return apply(multiplierPPM: multiplierPPM, to: cost)
    }

    /// `amount` × `ppm` / 1,000,000, rounded, saturating.
    public static func apply(multiplierPPM ppm: Int, to amount: Int) -> Int {
        guard ppm != 1_000_000 else { return amount }
        let (product, overflow) = amount.multipliedReportingOverflow(by: max(0, ppm))
        return overflow ? .max / 1_000_000 : (product + 500_000) / 1_000_000
    }
}
