//! Direct `serde::Serialize` → `regorus::Value` conversion.
//!
//! The pipeline hands us its request facts as any `Serialize` type. Going through a JSON string
//! (or a `serde_json::Value`) would allocate the document twice; this serializer builds the
//! regorus value in one pass. Maps and structs become objects with string keys, sequences
//! become arrays, `None`/unit become `null`, enums use serde's externally tagged form (the
//! same shape `serde_json` produces).

use std::collections::BTreeMap;
use std::fmt;

use regorus::Value;
use serde::ser::{self, Serialize};

/// Error produced while converting input into a policy value.
#[derive(Debug)]
pub struct ToValueError(String);

impl fmt::Display for ToValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ToValueError {}

impl ser::Error for ToValueError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ToValueError(msg.to_string())
    }
}

/// Converts any serializable value into a `regorus::Value`.
pub fn to_value<T: Serialize + ?Sized>(value: &T) -> Result<Value, ToValueError> {
    value.serialize(ValueSerializer)
}

fn string(s: &str) -> Value {
    Value::String(s.into())
}

thread_local! {
    /// Struct field and enum variant names are `&'static str`: convert each once per thread
    /// and share it (a reference-count increment instead of an allocation per request).
    static STATIC_STRINGS: std::cell::RefCell<Vec<(*const u8, usize, Value)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Enough for the request facts' field names; past it, names are allocated as usual.
const STATIC_STRINGS_MAX: usize = 256;

fn static_string(s: &'static str) -> Value {
    STATIC_STRINGS.with(|cache| {
        let Ok(mut cache) = cache.try_borrow_mut() else {
            return string(s);
        };
        if let Some((_, _, v)) = cache
            .iter()
            .find(|(ptr, len, _)| *ptr == s.as_ptr() && *len == s.len())
        {
            return v.clone();
        }
        let v = string(s);
        if cache.len() < STATIC_STRINGS_MAX {
            cache.push((s.as_ptr(), s.len(), v.clone()));
        }
        v
    })
}

fn float(v: f64) -> Result<Value, ToValueError> {
    if v.is_finite() {
        Ok(Value::from(v))
    } else {
        Err(ToValueError(format!(
            "non-finite number {v} in policy input"
        )))
    }
}

fn object(map: BTreeMap<Value, Value>) -> Value {
    if map.is_empty() {
        Value::new_object()
    } else {
        Value::from(map)
    }
}

struct ValueSerializer;

impl ser::Serializer for ValueSerializer {
    type Ok = Value;
    type Error = ToValueError;
    type SerializeSeq = SeqSerializer;
    type SerializeTuple = SeqSerializer;
    type SerializeTupleStruct = SeqSerializer;
    type SerializeTupleVariant = VariantSeqSerializer;
    type SerializeMap = MapSerializer;
    type SerializeStruct = MapSerializer;
    type SerializeStructVariant = VariantMapSerializer;

    fn serialize_bool(self, v: bool) -> Result<Value, ToValueError> {
        Ok(Value::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Value, ToValueError> {
        Ok(Value::from(i64::from(v)))
    }
    fn serialize_i16(self, v: i16) -> Result<Value, ToValueError> {
        Ok(Value::from(i64::from(v)))
    }
    fn serialize_i32(self, v: i32) -> Result<Value, ToValueError> {
        Ok(Value::from(i64::from(v)))
    }
    fn serialize_i64(self, v: i64) -> Result<Value, ToValueError> {
        Ok(Value::from(v))
    }
    fn serialize_i128(self, v: i128) -> Result<Value, ToValueError> {
        Ok(Value::from(v))
    }
    fn serialize_u8(self, v: u8) -> Result<Value, ToValueError> {
        Ok(Value::from(u64::from(v)))
    }
    fn serialize_u16(self, v: u16) -> Result<Value, ToValueError> {
        Ok(Value::from(u64::from(v)))
    }
    fn serialize_u32(self, v: u32) -> Result<Value, ToValueError> {
        Ok(Value::from(u64::from(v)))
    }
    fn serialize_u64(self, v: u64) -> Result<Value, ToValueError> {
        Ok(Value::from(v))
    }
    fn serialize_u128(self, v: u128) -> Result<Value, ToValueError> {
        Ok(Value::from(v))
    }
    fn serialize_f32(self, v: f32) -> Result<Value, ToValueError> {
        float(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<Value, ToValueError> {
        float(v)
    }
    fn serialize_char(self, v: char) -> Result<Value, ToValueError> {
        let mut buf = [0u8; 4];
        Ok(string(v.encode_utf8(&mut buf)))
    }
    fn serialize_str(self, v: &str) -> Result<Value, ToValueError> {
        Ok(string(v))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Value, ToValueError> {
        Ok(Value::from(
            v.iter()
                .map(|b| Value::from(u64::from(*b)))
                .collect::<Vec<_>>(),
        ))
    }
    fn serialize_none(self) -> Result<Value, ToValueError> {
        Ok(Value::Null)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Value, ToValueError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<Value, ToValueError> {
        Ok(Value::Null)
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<Value, ToValueError> {
        Ok(Value::Null)
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<Value, ToValueError> {
        Ok(static_string(variant))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<Value, ToValueError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<Value, ToValueError> {
        let mut map = BTreeMap::new();
        map.insert(static_string(variant), value.serialize(ValueSerializer)?);
        Ok(object(map))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<SeqSerializer, ToValueError> {
        Ok(SeqSerializer(Vec::with_capacity(len.unwrap_or(0))))
    }
    fn serialize_tuple(self, len: usize) -> Result<SeqSerializer, ToValueError> {
        Ok(SeqSerializer(Vec::with_capacity(len)))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<SeqSerializer, ToValueError> {
        Ok(SeqSerializer(Vec::with_capacity(len)))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<VariantSeqSerializer, ToValueError> {
        Ok(VariantSeqSerializer {
            variant,
            items: Vec::with_capacity(len),
        })
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<MapSerializer, ToValueError> {
        Ok(MapSerializer::default())
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<MapSerializer, ToValueError> {
        Ok(MapSerializer::default())
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<VariantMapSerializer, ToValueError> {
        Ok(VariantMapSerializer {
            variant,
            map: BTreeMap::new(),
        })
    }
}

struct SeqSerializer(Vec<Value>);

impl ser::SerializeSeq for SeqSerializer {
    type Ok = Value;
    type Error = ToValueError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ToValueError> {
        self.0.push(value.serialize(ValueSerializer)?);
        Ok(())
    }
    fn end(self) -> Result<Value, ToValueError> {
        Ok(Value::from(self.0))
    }
}

impl ser::SerializeTuple for SeqSerializer {
    type Ok = Value;
    type Error = ToValueError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ToValueError> {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result<Value, ToValueError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleStruct for SeqSerializer {
    type Ok = Value;
    type Error = ToValueError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ToValueError> {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result<Value, ToValueError> {
        ser::SerializeSeq::end(self)
    }
}

struct VariantSeqSerializer {
    variant: &'static str,
    items: Vec<Value>,
}

impl ser::SerializeTupleVariant for VariantSeqSerializer {
    type Ok = Value;
    type Error = ToValueError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ToValueError> {
        self.items.push(value.serialize(ValueSerializer)?);
        Ok(())
    }
    fn end(self) -> Result<Value, ToValueError> {
        let mut map = BTreeMap::new();
        map.insert(static_string(self.variant), Value::from(self.items));
        Ok(object(map))
    }
}

#[derive(Default)]
struct MapSerializer {
    map: BTreeMap<Value, Value>,
    key: Option<Value>,
}

impl ser::SerializeMap for MapSerializer {
    type Ok = Value;
    type Error = ToValueError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), ToValueError> {
        // JSON-compatible documents only: map keys must serialize as strings (or be
        // stringified scalars, as serde_json does for integer keys).
        let key = match key.serialize(ValueSerializer)? {
            k @ Value::String(_) => k,
            Value::Number(n) => string(&Value::Number(n).to_string()),
            Value::Bool(b) => string(if b { "true" } else { "false" }),
            other => {
                return Err(ToValueError(format!(
                    "policy input map key must be a string, got {other}"
                )));
            }
        };
        self.key = Some(key);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ToValueError> {
        let key = self
            .key
            .take()
            .ok_or_else(|| ToValueError("map value serialized before its key".into()))?;
        self.map.insert(key, value.serialize(ValueSerializer)?);
        Ok(())
    }
    fn end(self) -> Result<Value, ToValueError> {
        Ok(object(self.map))
    }
}

impl ser::SerializeStruct for MapSerializer {
    type Ok = Value;
    type Error = ToValueError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), ToValueError> {
        self.map
            .insert(static_string(key), value.serialize(ValueSerializer)?);
        Ok(())
    }
    fn end(self) -> Result<Value, ToValueError> {
        Ok(object(self.map))
    }
}

struct VariantMapSerializer {
    variant: &'static str,
    map: BTreeMap<Value, Value>,
}

impl ser::SerializeStructVariant for VariantMapSerializer {
    type Ok = Value;
    type Error = ToValueError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), ToValueError> {
        self.map
            .insert(static_string(key), value.serialize(ValueSerializer)?);
        Ok(())
    }
    fn end(self) -> Result<Value, ToValueError> {
        let mut outer = BTreeMap::new();
        outer.insert(static_string(self.variant), object(self.map));
        Ok(object(outer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_json_route() {
        #[derive(serde::Serialize)]
        #[serde(rename_all = "snake_case")]
        enum Kind {
            Select,
            Other(String),
        }
        #[derive(serde::Serialize)]
        struct Q<'a> {
            kind: Kind,
            other: Kind,
            tables: Vec<&'a str>,
            limit: Option<u32>,
            ratio: f64,
            neg: i32,
            nested: std::collections::HashMap<String, bool>,
            empty: BTreeMap<String, u8>,
        }
        let q = Q {
            kind: Kind::Select,
            other: Kind::Other("x".into()),
            tables: vec!["a", "b"],
            limit: None,
            ratio: 0.5,
            neg: -3,
            nested: [("k".to_string(), true)].into_iter().collect(),
            empty: BTreeMap::new(),
        };
        let direct = to_value(&q).unwrap();
        let via_json = Value::from_json_str(&serde_json::to_string(&q).unwrap()).unwrap();
        assert_eq!(direct, via_json);
        assert!(to_value(&f64::NAN).is_err());
    }
}
